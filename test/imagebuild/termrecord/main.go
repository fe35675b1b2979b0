// Command termrecord is the workload of the real-node end-to-end tests. It
// writes the time SIGTERM arrived into $RECORD_DIR/$POD_NAME (a hostPath the
// test reads after the pod is gone), then keeps running for $EXIT_DELAY (a Go
// duration, default 0) before it exits, like a server finishing its requests.
// A kubelet that kills it early, or never signals it, shows in the file.
//
// With $LISTEN (e.g. ":8080") it also serves HTTP, answering every request
// with $POD_NAME, from its start until it exits, through the EXIT_DELAY
// after SIGTERM: a server behind a load balancer.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	delay, err := time.ParseDuration(envOr("EXIT_DELAY", "0s"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "termrecord: EXIT_DELAY:", err)
		os.Exit(2)
	}
	record := filepath.Join(envOr("RECORD_DIR", "/record"), envOr("POD_NAME", "termrecord"))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	start := time.Now()
	if err := appendLine(record, "started "+start.UTC().Format(time.RFC3339Nano)); err != nil {
		fmt.Fprintln(os.Stderr, "termrecord:", err)
		os.Exit(1)
	}
	if addr := os.Getenv("LISTEN"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "termrecord: LISTEN:", err)
			os.Exit(1)
		}
		name := envOr("POD_NAME", "termrecord")
		srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, name)
		})}
		go func() { _ = srv.Serve(ln) }()
	}
	fmt.Println("termrecord: running, exit delay", delay)
	<-sig
	if err := appendLine(record, "sigterm "+time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		fmt.Fprintln(os.Stderr, "termrecord:", err)
	}
	time.Sleep(delay) // the work a real server finishes after SIGTERM
	if err := appendLine(record, "exit "+time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		fmt.Fprintln(os.Stderr, "termrecord:", err)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// appendLine appends and syncs, so the line survives the container being
// killed right after.
func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("record %s: %w", path, err)
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("record %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("record %s: %w", path, err)
	}
	return f.Close()
}
