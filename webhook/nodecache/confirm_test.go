package nodecache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"termgate.dev/termgate/nodemark"
)

// apiNodes is the API server's side of a confirmation: the nodes as they
// are now, or an error, and the reads made. A read sees the nodes as they
// are when it starts, as a quorum read does.
type apiNodes struct {
	mu    sync.Mutex
	nodes map[string]map[string]string // name -> annotations
	err   error
	block bool // wait for the read's context to end
	// hold, when set, keeps each read waiting after it started until a
	// value is sent.
	hold  chan struct{}
	reads []string
	// deadlineIn is how long the last read was given.
	deadlineIn time.Duration
}

func (a *apiNodes) Get(ctx context.Context, name string, _ metav1.GetOptions, _ ...string) (*metav1.PartialObjectMetadata, error) {
	a.mu.Lock()
	a.reads = append(a.reads, name)
	if d, ok := ctx.Deadline(); ok {
		a.deadlineIn = time.Until(d)
	}
	ann, ok := a.nodes[name]
	block, err, hold := a.block, a.err, a.hold
	a.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, name)
	}
	return NodeMeta(name, ann), nil
}

func (a *apiNodes) set(name string, annotations map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nodes[name] = annotations
}

func (a *apiNodes) readCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.reads)
}

func spotMeta(name string, annotations map[string]string) *metav1.PartialObjectMetadata {
	m := NodeMeta(name, annotations)
	m.Labels = map[string]string{"cloud.google.com/gke-spot": "true"}
	return m
}

// staleCache holds every node unmarked except "advance" (in the advance
// state) and "known-dying" (terminating), as an informer behind the API
// server would.
func staleCache(t *testing.T) *Cache {
	t.Helper()
	store := NewStore()
	for _, m := range []*metav1.PartialObjectMetadata{
		spotMeta("spot", nil),
		spotMeta("spot-gone", nil),
		NodeMeta("on-demand", nil),
		NodeMeta("advance", nodemark.Mark{State: nodemark.StateAdvance}.Annotations()),
		spotMeta("known-dying", nodemark.Mark{State: nodemark.StateTerminating}.Annotations()),
	} {
		if err := store.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	return NewFromStore(store)
}

func TestConfirmer(t *testing.T) {
	marked := nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted}.Annotations()
	atRisk, err := ParseSelectors(DefaultAtRisk)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		node            string
		api             *apiNodes
		wantKnown       bool
		wantUnconfirmed bool
		wantReads       int
		wantResult      string
		wantState       nodemark.State
	}{
		"A Spot node the API server has marked is terminating although the cache has not seen the mark.": {
			node: "spot", api: &apiNodes{nodes: map[string]map[string]string{"spot": marked}},
			wantKnown: true, wantState: nodemark.StateTerminating, wantReads: 1, wantResult: ConfirmCaught,
		},
		"A Spot node that is really not marked is not terminating, after one read.": {
			node: "spot", api: &apiNodes{nodes: map[string]map[string]string{"spot": nil}},
			wantKnown: true, wantReads: 1, wantResult: ConfirmAgreed,
		},
		"A node in the advance state is re-read whatever its labels.": {
			node: "advance", api: &apiNodes{nodes: map[string]map[string]string{"advance": marked}},
			wantKnown: true, wantState: nodemark.StateTerminating, wantReads: 1, wantResult: ConfirmCaught,
		},
		"An advance node whose mark is gone is answered as stored.": {
			node: "advance", api: &apiNodes{nodes: map[string]map[string]string{"advance": nil}},
			wantKnown: true, wantReads: 1, wantResult: ConfirmAgreed,
		},
		"An on-demand node is answered from the cache alone.": {
			node: "on-demand", api: &apiNodes{nodes: map[string]map[string]string{"on-demand": marked}},
			wantKnown: true,
		},
		"A node the cache already knows to be terminating is not re-read.": {
			node: "known-dying", api: &apiNodes{}, wantKnown: true, wantState: nodemark.StateTerminating,
		},
		"A node the cache does not know stays unknown, with no read.": {
			node: "brand-new", api: &apiNodes{},
		},
		"When the read fails the cache's answer stands and says it is unconfirmed.": {
			node: "spot", api: &apiNodes{err: errors.New("connection refused")},
			wantKnown: true, wantUnconfirmed: true, wantReads: 1, wantResult: ConfirmFailed,
		},
		"A read that does not answer ends at the timeout and the cache's answer stands.": {
			node: "spot", api: &apiNodes{block: true},
			wantKnown: true, wantUnconfirmed: true, wantReads: 1, wantResult: ConfirmFailed,
		},
		"A Spot node deleted from the API server is answered as the cache has it.": {
			node: "spot-gone", api: &apiNodes{},
			wantKnown: true, wantReads: 1, wantResult: ConfirmGone,
		},
	}
	const timeout = 50 * time.Millisecond
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			metrics, err := NewConfirmMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			c := NewConfirmer(staleCache(t), NewRereader(tc.api, timeout), atRisk, metrics)
			n, known := c.Lookup(context.Background(), tc.node)
			if known != tc.wantKnown || n.Mark.State != tc.wantState || n.Unconfirmed != tc.wantUnconfirmed {
				t.Fatalf("got %+v known=%v, want known=%v state=%q unconfirmed=%v", n, known, tc.wantKnown, tc.wantState, tc.wantUnconfirmed)
			}
			if len(tc.api.reads) != tc.wantReads {
				t.Fatalf("reads %v, want %d", tc.api.reads, tc.wantReads)
			}
			if tc.wantReads > 0 && (tc.api.deadlineIn <= 0 || tc.api.deadlineIn > timeout) {
				t.Fatalf("the read was given %v, want at most the timeout %v", tc.api.deadlineIn, timeout)
			}
			for _, r := range []string{ConfirmAgreed, ConfirmCaught, ConfirmGone, ConfirmFailed} {
				want := 0.0
				if r == tc.wantResult {
					want = 1
				}
				if got := counted(t, metrics.results.WithLabelValues(r)); got != want {
					t.Errorf("result %s counted %v times, want %v", r, got, want)
				}
			}
		})
	}
}

func TestConfirmerWithoutAClientNeverReads(t *testing.T) {
	atRisk, _ := ParseSelectors(DefaultAtRisk)
	c := NewConfirmer(staleCache(t), nil, atRisk, nil)
	n, known := c.Lookup(context.Background(), "spot")
	if !known || n.Terminating() || n.Unconfirmed {
		t.Fatalf("got %+v known=%v: want the cache's answer", n, known)
	}
}

func TestParseSelectors(t *testing.T) {
	for _, tc := range []struct {
		in       string
		wantN    int
		wantKeys []string
		wantErr  bool
	}{
		{in: "", wantN: 0},
		{in: " ; ", wantN: 0},
		{in: DefaultAtRisk, wantN: 2, wantKeys: []string{"cloud.google.com/gke-spot", "cloud.google.com/gke-preemptible"}},
		{in: "karpenter.sh/capacity-type=spot,topology.kubernetes.io/zone in (a,b)", wantN: 1, wantKeys: []string{"karpenter.sh/capacity-type", "topology.kubernetes.io/zone"}},
		{in: "cloud.google.com/gke-accelerator", wantN: 1, wantKeys: []string{"cloud.google.com/gke-accelerator"}},
		{in: "a=b;in valid!", wantErr: true},
	} {
		sels, err := ParseSelectors(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%q: err %v, want error %v", tc.in, err, tc.wantErr)
		}
		if tc.wantErr {
			continue
		}
		if len(sels) != tc.wantN {
			t.Fatalf("%q: %d selectors, want %d", tc.in, len(sels), tc.wantN)
		}
		if keys := SelectorLabelKeys(sels); !slices.Equal(keys, tc.wantKeys) {
			t.Fatalf("%q: keys %v, want %v", tc.in, keys, tc.wantKeys)
		}
	}
}

func counted(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestConcurrentRereadsOfANodeShareReads: a burst of binds onto one Spot
// node costs two reads, not one per bind.
func TestConcurrentRereadsOfANodeShareReads(t *testing.T) {
	atRisk, _ := ParseSelectors(DefaultAtRisk)
	api := &apiNodes{nodes: map[string]map[string]string{"spot": nil}, hold: make(chan struct{})}
	reads := NewRereader(api, time.Second)
	c := NewConfirmer(staleCache(t), reads, atRisk, nil)
	const binds = 50
	var wg sync.WaitGroup
	for range binds {
		wg.Go(func() {
			if n, known := c.Lookup(context.Background(), "spot"); !known || n.Unconfirmed {
				t.Errorf("got %+v known=%v, want a confirmed answer", n, known)
			}
		})
	}
	// Let every caller queue behind the first read, then let reads end.
	waitFor(t, func() bool { return reads.waiting("spot") == binds })
	close(api.hold)
	wg.Wait()
	if got := api.readCount(); got > 2 {
		t.Fatalf("%d reads for %d concurrent binds onto one node, want at most 2", got, binds)
	}
}

// TestASharedRereadBeganAfterItsCaller: a bind that arrives while a read of
// its node is on the wire is not answered by that read, which may predate
// a mark stored just before the bind: it waits for the next read.
func TestASharedRereadBeganAfterItsCaller(t *testing.T) {
	atRisk, _ := ParseSelectors(DefaultAtRisk)
	api := &apiNodes{nodes: map[string]map[string]string{"spot": nil}, hold: make(chan struct{}, 2)}
	c := NewConfirmer(staleCache(t), NewRereader(api, time.Second), atRisk, nil)
	first := make(chan Node, 1)
	go func() { n, _ := c.Lookup(context.Background(), "spot"); first <- n }()
	waitFor(t, func() bool { return api.readCount() == 1 })
	// The mark is stored while the first read is on the wire; then a bind
	// arrives.
	api.set("spot", nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted}.Annotations())
	second := make(chan Node, 1)
	go func() { n, _ := c.Lookup(context.Background(), "spot"); second <- n }()
	api.hold <- struct{}{}
	if n := <-first; n.Terminating() {
		t.Fatal("the first read saw a mark stored after it began: the fake is wrong")
	}
	api.hold <- struct{}{}
	if n := <-second; !n.Terminating() {
		t.Fatal("a bind that arrived after the mark was stored got the answer of a read from before it")
	}
}

func TestDryRunRequestsNeverReread(t *testing.T) {
	atRisk, _ := ParseSelectors(DefaultAtRisk)
	api := &apiNodes{nodes: map[string]map[string]string{"spot": nil}}
	c := NewConfirmer(staleCache(t), NewRereader(api, time.Second), atRisk, nil)
	for range 10 {
		c.Lookup(WithoutReread(context.Background()), "spot")
	}
	if got := api.readCount(); got != 0 {
		t.Fatalf("%d reads for dry-run lookups, want 0", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// The confinement's pod list must start at the first eviction even when the
// cache holds the mark before its change callback ran: seen hears of marks
// the cache found, not only those a re-read found.
func TestMarksTellsOfEveryMarkFound(t *testing.T) {
	api := &apiNodes{nodes: map[string]map[string]string{
		"spot":      nodemark.Mark{State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted}.Annotations(),
		"on-demand": nil,
	}}
	var seen []string
	m := NewMarks(staleCache(t), NewRereader(api, time.Second), func(node string) { seen = append(seen, node) })
	for _, tc := range []struct {
		node string
		want bool
	}{{"known-dying", true}, {"spot", true}, {"on-demand", false}} {
		got, err := m.Terminating(t.Context(), tc.node)
		if err != nil || got != tc.want {
			t.Errorf("Terminating(%s) = %v, %v; want %v", tc.node, got, err, tc.want)
		}
	}
	if want := []string{"known-dying", "spot"}; !slices.Equal(seen, want) {
		t.Errorf("seen %v, want %v (the cache's mark and the re-read's)", seen, want)
	}
}
