// Package prometheus pins the Prometheus server the end-to-end monitoring
// test runs (test/e2e/monitoring): the Makefile builds
// github.com/prometheus/prometheus/cmd/prometheus from this module, a
// module of its own so that Prometheus' dependencies never move the
// product's pins, with -tags remove_all_sd (the test scrapes static
// targets; no cloud's service discovery is linked).
package prometheus
