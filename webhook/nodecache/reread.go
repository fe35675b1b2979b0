package nodecache

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Rereader reads nodes from the API server for the gates, sharing reads
// between callers: in a storm, many binds and evictions ask about the same
// node at once, and one read answers them all.
//
// A shared read must still see every mark stored before each caller
// arrived, or a bind received after the mark could be answered from before
// it. So a caller joins a read only if that read has not started yet: while
// a read of a node is on the wire, callers arriving meanwhile wait for the
// next one, which starts as soon as the current one ends and serves them
// all. At most two reads per node are in progress or queued, whatever the
// number of callers, and each caller's answer comes from a read that began
// after it asked.
type Rereader struct {
	nodes   NodeGetter
	timeout time.Duration

	mu      sync.Mutex
	flights map[string]*nodeFlights
}

// nodeFlights are one node's read on the wire and the one queued after it.
type nodeFlights struct {
	current, next *flight
}

// flight is one read and its answer.
type flight struct {
	done chan struct{}
	meta *metav1.PartialObjectMetadata
	err  error
	// callers counts who waits for this read.
	callers int
}

// NewRereader reads through nodes, each read bounded by timeout. Give nodes
// a client whose rate limiter is its own: its budget is then this reader's
// alone.
func NewRereader(nodes NodeGetter, timeout time.Duration) *Rereader {
	return &Rereader{nodes: nodes, timeout: timeout, flights: map[string]*nodeFlights{}}
}

// Read returns node name as stored now (by quorum), from a read that began
// after the call. ctx bounds the caller's wait, not the shared read.
func (r *Rereader) Read(ctx context.Context, name string) (*metav1.PartialObjectMetadata, error) {
	r.mu.Lock()
	nf := r.flights[name]
	if nf == nil {
		nf = &nodeFlights{}
		r.flights[name] = nf
	}
	var f *flight
	switch {
	case nf.current == nil:
		f = &flight{done: make(chan struct{})}
		nf.current = f
		r.start(name, nf, f)
	case nf.next == nil:
		f = &flight{done: make(chan struct{})}
		nf.next = f
	default:
		f = nf.next
	}
	f.callers++
	r.mu.Unlock()
	select {
	case <-f.done:
		return f.meta, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("read node %s: %w", name, ctx.Err())
	}
}

// start runs f's read; when it ends, the queued read starts.
func (r *Rereader) start(name string, nf *nodeFlights, f *flight) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		f.meta, f.err = r.nodes.Get(ctx, name, metav1.GetOptions{})
		cancel()
		if f.err != nil {
			f.err = fmt.Errorf("read node %s: %w", name, f.err)
		}
		close(f.done)
		r.mu.Lock()
		defer r.mu.Unlock()
		nf.current, nf.next = nf.next, nil
		if nf.current != nil {
			r.start(name, nf, nf.current)
			return
		}
		delete(r.flights, name)
	}()
}

// waiting counts the callers waiting for reads of node name (tests).
func (r *Rereader) waiting(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	if nf := r.flights[name]; nf != nil {
		for _, f := range []*flight{nf.current, nf.next} {
			if f != nil {
				n += f.callers
			}
		}
	}
	return n
}

type noRereadKey struct{}

// WithoutReread marks ctx so that a Confirmer answers from its cache alone.
// The gates use it for dry-run requests: they change nothing, and a tenant
// could otherwise send them by the thousand to spend the reads that real
// binds need.
func WithoutReread(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRereadKey{}, true)
}

// RereadAllowed reports whether ctx lets a Confirmer re-read (it was not
// marked WithoutReread).
func RereadAllowed(ctx context.Context) bool {
	v, _ := ctx.Value(noRereadKey{}).(bool)
	return !v
}
