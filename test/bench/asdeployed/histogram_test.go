package asdeployed

import (
	"math"
	"testing"
)

func TestLabel(t *testing.T) {
	key := `m_bucket{resource="pods",subresource="eviction",le="0.5"}`
	for name, want := range map[string]string{"resource": "pods", "subresource": "eviction", "le": "0.5", "verb": "", "source": ""} {
		if got := Label(key, name); got != want {
			t.Errorf("Label(%s) = %q, want %q", name, got, want)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	// 100 requests: 50 under 0.1 s, 40 more under 0.5 s, 9 more under 1 s,
	// 1 above; the 99th falls at the top of the 1 s bucket.
	s := map[string]float64{
		`m_bucket{verb="POST",le="0.1"}`:  50,
		`m_bucket{verb="POST",le="0.5"}`:  90,
		`m_bucket{verb="POST",le="1"}`:    99,
		`m_bucket{verb="POST",le="+Inf"}`: 100,
		`m_bucket{verb="GET",le="0.1"}`:   10,
		`m_bucket{verb="GET",le="+Inf"}`:  10,
		`m_count{verb="POST"}`:            100,
	}
	q, n := HistogramQuantiles(s, "m", 0.99, func(k string) string { return Label(k, "verb") })
	if math.Abs(q["POST"]-1) > 1e-9 || n["POST"] != 100 {
		t.Errorf("POST p99 %v of %v, want 1 of 100", q["POST"], n["POST"])
	}
	if q50, _ := HistogramQuantiles(s, "m", 0.5, func(k string) string { return Label(k, "verb") }); math.Abs(q50["POST"]-0.1) > 1e-9 {
		t.Errorf("POST p50 %v, want 0.1", q50["POST"])
	}
	if math.Abs(q["GET"]-0.099) > 1e-9 {
		t.Errorf("GET p99 %v, want 0.099 (linear within the first bucket)", q["GET"])
	}
	if q, _ := HistogramQuantiles(map[string]float64{`m_bucket{verb="X",le="+Inf"}`: 0}, "m", 0.99, func(string) string { return "X" }); len(q) != 0 {
		t.Errorf("empty histogram gave %v", q)
	}
}
