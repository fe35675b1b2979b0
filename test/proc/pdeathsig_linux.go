package proc

import (
	"os/exec"
	"runtime"
)

// startLocked starts cmd from one OS thread that lives as long as the test
// binary. Pdeathsig fires when the thread that forked the child exits, not
// when the process does, and the Go runtime may retire idle threads: forking
// from a thread that a goroutine keeps locked forever ties the children's
// lives to the process's.
func startLocked(cmd *exec.Cmd) error {
	req := startRequest{cmd: cmd, err: make(chan error, 1)}
	forker <- req
	return <-req.err
}

type startRequest struct {
	cmd *exec.Cmd
	err chan error
}

// forker is the one goroutine, locked to its thread, that forks children. It
// is process-wide by necessity: the thread must outlive every Cluster.
var forker = func() chan startRequest {
	ch := make(chan startRequest)
	go func() {
		runtime.LockOSThread()
		for req := range ch {
			req.err <- req.cmd.Start()
		}
	}()
	return ch
}()
