package asdeployed

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

// Label returns the value of a label in a sample's key as
// localrun.Samples writes it (name{a="x",b="y"}), "" when absent.
func Label(key, name string) string {
	for _, sep := range []string{"{", ","} {
		if _, rest, ok := strings.Cut(key, sep+name+`="`); ok {
			v, _, _ := strings.Cut(rest, `"`)
			return v
		}
	}
	return ""
}

// HistogramQuantiles groups the _bucket samples of a cumulative histogram
// (such as a rise over a run) by group(key), skipping keys for which it
// returns "", and estimates each group's q-quantile (0 < q < 1) as
// Prometheus' histogram_quantile does: linear within the bucket it falls
// in, the highest finite bound when it falls in +Inf. It also returns each
// group's count.
func HistogramQuantiles(samples map[string]float64, metric string, q float64, group func(key string) string) (quantiles, counts map[string]float64) {
	buckets := map[string]map[float64]float64{}
	for k, v := range samples {
		if !strings.HasPrefix(k, metric+"_bucket{") {
			continue
		}
		g := group(k)
		if g == "" {
			continue
		}
		le, err := strconv.ParseFloat(Label(k, "le"), 64)
		if err != nil {
			if Label(k, "le") != "+Inf" {
				continue
			}
			le = math.Inf(1)
		}
		if buckets[g] == nil {
			buckets[g] = map[float64]float64{}
		}
		buckets[g][le] += v
	}
	quantiles, counts = map[string]float64{}, map[string]float64{}
	for g, b := range buckets {
		bounds := make([]float64, 0, len(b))
		for le := range b {
			bounds = append(bounds, le)
		}
		slices.Sort(bounds)
		total := b[bounds[len(bounds)-1]]
		if total <= 0 {
			continue
		}
		counts[g] = total
		rank := q * total
		lower, below := 0.0, 0.0
		for _, le := range bounds {
			if b[le] >= rank {
				if math.IsInf(le, 1) {
					quantiles[g] = lower
				} else {
					quantiles[g] = lower + (le-lower)*(rank-below)/(b[le]-below)
				}
				break
			}
			lower, below = le, b[le]
		}
	}
	return quantiles, counts
}
