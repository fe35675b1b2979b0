package main

import (
	"context"
	"fmt"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
)

// registration is the shipped webhook configurations as the running webhook
// left them (URL on loopback, CA injected). Removing and restoring them
// switches the webhook out of and back into the API server's path without
// restarting it, so drains with and without it alternate in one run.
type registration struct {
	c          *cluster.Cluster
	validating *admissionv1.ValidatingWebhookConfiguration
	mutating   *admissionv1.MutatingWebhookConfiguration
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
	return &registration{c: c, validating: v, mutating: m, registered: true}, nil
}

// remove deletes both configurations and waits until they are gone.
func (r *registration) remove(ctx context.Context) error {
	if !r.registered {
		return nil
	}
	api := r.c.Client.AdmissionregistrationV1()
	if err := api.ValidatingWebhookConfigurations().Delete(ctx, r.validating.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove validating webhook configuration: %w", err)
	}
	if err := api.MutatingWebhookConfigurations().Delete(ctx, r.mutating.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove mutating webhook configuration: %w", err)
	}
	r.registered = false
	return nil
}

// restore creates both configurations again, as saved.
func (r *registration) restore(ctx context.Context) error {
	if r.registered {
		return nil
	}
	api := r.c.Client.AdmissionregistrationV1()
	err := kit.Poll(ctx, 10*time.Second, func(ctx context.Context) (bool, string, error) {
		_, err := api.ValidatingWebhookConfigurations().Create(ctx, r.validating.DeepCopy(), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return false, "the removed configuration is still being deleted", nil
		}
		return err == nil, "", err
	})
	if err != nil {
		return fmt.Errorf("restore validating webhook configuration: %w", err)
	}
	err = kit.Poll(ctx, 10*time.Second, func(ctx context.Context) (bool, string, error) {
		_, err := api.MutatingWebhookConfigurations().Create(ctx, r.mutating.DeepCopy(), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return false, "the removed configuration is still being deleted", nil
		}
		return err == nil, "", err
	})
	if err != nil {
		return fmt.Errorf("restore mutating webhook configuration: %w", err)
	}
	r.registered = true
	return nil
}
