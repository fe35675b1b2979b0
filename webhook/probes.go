package webhook

// Check is one readiness condition of a replica. cmd/termgate/daemon serves
// them at /readyz, as it serves the agent's.
type Check struct {
	Name string
	// Fn returns nil when the condition holds, else why not; it answers
	// from memory.
	Fn func() error
}
