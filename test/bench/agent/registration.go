package main

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/localrun"
)

// registration is the shipped webhook configurations as the running webhook
// left them (URL on loopback, CA injected). Removing and restoring them
// switches the webhook out of and back into the API server's path without
// restarting it, so drains with and without it alternate in one run.
type registration struct {
	c          *cluster.Cluster
	saved      localrun.WebhookConfigurations
	registered bool
}

func saveRegistration(ctx context.Context, c *cluster.Cluster, name string) (*registration, error) {
	api := c.Client.AdmissionregistrationV1()
	v, err := api.ValidatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read validating webhook configuration: %w", err)
	}
	m, err := api.MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read mutating webhook configuration: %w", err)
	}
	for _, meta := range []*metav1.ObjectMeta{&v.ObjectMeta, &m.ObjectMeta} {
		*meta = metav1.ObjectMeta{Name: meta.Name, Labels: meta.Labels, Annotations: meta.Annotations}
	}
	return &registration{c: c, saved: localrun.WebhookConfigurations{Name: name, Validating: v, Mutating: m}, registered: true}, nil
}

// remove deletes both configurations (they have no finalizers: gone at
// once).
func (r *registration) remove(ctx context.Context) error {
	if !r.registered {
		return nil
	}
	if err := r.saved.Unregister(ctx, r.c.Client); err != nil {
		return err
	}
	r.registered = false
	return nil
}

// restore creates both configurations again, as saved.
func (r *registration) restore(ctx context.Context) error {
	if r.registered {
		return nil
	}
	if err := r.saved.Register(ctx, r.c.Client); err != nil {
		return err
	}
	r.registered = true
	return nil
}
