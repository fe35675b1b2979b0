package kit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// failOpenMetric counts, per webhook, the admission calls the API server
// could not complete and let through because the webhook's failurePolicy is
// Ignore.
const failOpenMetric = "apiserver_admission_webhook_fail_open_count"

// FailOpenCount reads the API server's /metrics and sums failOpenMetric over
// termgate's webhooks (those named *.termgate.dev). The counter only grows
// while the API server runs, so a rise between two reads proves that a call
// to termgate failed open in between: the proof that a test ran while the
// webhook could not be reached, rather than one the webhook answered.
func FailOpenCount(ctx context.Context, client kubernetes.Interface) (int, error) {
	body, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the API server's metrics: %w", err)
	}
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(body))
	// Some histogram lines with many labels are long; 1 MiB is far beyond any.
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		labels, ok := strings.CutPrefix(line, failOpenMetric+"{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(labels, '}')
		if end < 0 {
			return 0, fmt.Errorf("malformed %s line %q", failOpenMetric, line)
		}
		if !strings.Contains(labels[:end], `.termgate.dev"`) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(labels[end+1:]), 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s line %q: %w", failOpenMetric, line, err)
		}
		total += int(v)
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("scan the API server's metrics: %w", err)
	}
	return total, nil
}
