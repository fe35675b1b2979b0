package kit

import (
	"errors"
	"sync"
)

// InParallel runs fn for every item, at most n at once, and joins the
// errors.
func InParallel[T any](items []T, n int, fn func(T) error) error {
	sem := make(chan struct{}, n)
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = fn(it)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
