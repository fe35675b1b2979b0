package app

import (
	"context"
	"errors"
)

// runAgent is filled in by the agent work.
func runAgent(ctx context.Context, args []string) error { return errors.New("agent: not built yet") }
