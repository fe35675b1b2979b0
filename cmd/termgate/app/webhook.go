package app

import (
	"context"
	"errors"
)

// runWebhook is filled in by the webhook work.
func runWebhook(ctx context.Context, args []string) error {
	return errors.New("webhook: not built yet")
}
