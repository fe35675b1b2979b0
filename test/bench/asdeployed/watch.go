package asdeployed

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// ResumingWatch lists once (one item) for a resourceVersion and watches
// from it with the selectors of sel, resuming from the last event seen when
// the API server closes the connection, which it does at any time. A trial
// that a closed watch ended would be lost or, worse, timed wrong.
func ResumingWatch(ctx context.Context, list func(context.Context, metav1.ListOptions) (resourceVersion string, err error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error), sel metav1.ListOptions) (*watchtools.RetryWatcher, error) {
	lo := sel
	lo.Limit = 1
	rv, err := list(ctx, lo)
	if err != nil {
		return nil, fmt.Errorf("list for a resourceVersion: %w", err)
	}
	lw := &cache.ListWatch{WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		o.LabelSelector, o.FieldSelector = sel.LabelSelector, sel.FieldSelector
		return watchFn(ctx, o)
	}}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, rv, lw)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	return w, nil
}
