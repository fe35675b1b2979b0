package main

import (
	"strings"

	"termgate.dev/termgate/test/bench/asdeployed"
)

// The API server's own latency histograms that shape Z reads.
const (
	requestHistogram = "apiserver_request_duration_seconds"
	webhookHistogram = "apiserver_admission_webhook_admission_duration_seconds"
)

// mutatingVerbs are the request verbs that write, as the API server's
// histogram names them, and the API verb each is.
var mutatingVerbs = map[string]string{"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "DELETECOLLECTION": "deletecollection", "APPLY": "apply"}

// requestP99 is the p99 in ms of the API server's mutating requests over
// the samples' rise, by resource (and subresource) and verb, e.g.
// "pods/eviction create", with each one's count.
func requestP99(rise map[string]float64) (p99, counts map[string]float64) {
	q, n := asdeployed.HistogramQuantiles(rise, requestHistogram, 0.99, func(k string) string {
		verb, ok := mutatingVerbs[asdeployed.Label(k, "verb")]
		if !ok {
			return ""
		}
		res := asdeployed.Label(k, "resource")
		if sub := asdeployed.Label(k, "subresource"); sub != "" {
			res += "/" + sub
		}
		return res + " " + verb
	})
	for k, v := range q {
		q[k] = v * 1000
	}
	return q, n
}

// webhookP99 is the p99 in ms of the API server's calls to each of
// termgate's webhooks, as it timed them, by gate (the webhook's name
// without .termgate.dev).
func webhookP99(rise map[string]float64) map[string]float64 {
	q, _ := asdeployed.HistogramQuantiles(rise, webhookHistogram, 0.99, func(k string) string {
		gate, ok := strings.CutSuffix(asdeployed.Label(k, "name"), ".termgate.dev")
		if !ok {
			return ""
		}
		return gate
	})
	for k, v := range q {
		q[k] = v * 1000
	}
	return q
}

// keyPart makes a figure key's part of a resource, verb or gate name.
func keyPart(s string) string {
	return strings.NewReplacer("/", "_", " ", "_", "-", "_", ".", "_").Replace(s)
}
