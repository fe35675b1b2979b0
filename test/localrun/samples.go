package localrun

import (
	"slices"
	"strconv"
	"strings"
)

// Samples are the samples of a Prometheus text exposition whose metric
// names start with one of prefixes, keyed by name and labels as written.
func Samples(body string, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(line, p) }) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// Rise returns the samples that changed from before to after, by how much.
func Rise(before, after map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
