package kube

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Install applies objs in order and, when wait is set, waits until each
// is ready: CRDs established before anything after them, Deployments
// available, DaemonSets ready on every node, a webhook registration
// trusting its server (its caBundle set). Progress lines go to w.
func (a *Applier) Install(ctx context.Context, objs []*unstructured.Unstructured, wait bool, w io.Writer) error {
	for _, u := range objs {
		if err := a.Apply(ctx, u); err != nil {
			return err
		}
		fmt.Fprintf(w, "applied %s %s\n", u.GetKind(), qualified(u))
		if wait && u.GetKind() == "CustomResourceDefinition" {
			if err := a.waitFor(ctx, u, 30*time.Second, established); err != nil {
				return err
			}
		}
	}
	if !wait {
		return nil
	}
	for _, u := range objs {
		var check func(*unstructured.Unstructured) error
		switch u.GetKind() {
		case "Deployment":
			check = available
		case "DaemonSet":
			check = everyNode
		case "MutatingWebhookConfiguration":
			check = caBundleSet
		default:
			continue
		}
		if err := a.waitFor(ctx, u, 3*time.Minute, check); err != nil {
			return err
		}
		fmt.Fprintf(w, "ready   %s %s\n", u.GetKind(), qualified(u))
	}
	return nil
}

// Uninstall deletes objs in reverse order (the webhook registration
// first, so no pod is sent to a control plane going away) and waits until
// they are gone. A DaemonSet is deleted in the foreground and waited for
// before anything after it: its pods (the node agents) stop while their
// DaemonSet is still there to say it is going, and their rights to read
// it, so they remove their rules. Progress lines go to w.
func (a *Applier) Uninstall(ctx context.Context, objs []*unstructured.Unstructured, w io.Writer) error {
	rev := slices.Clone(objs)
	slices.Reverse(rev)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for _, u := range rev {
		foreground := u.GetKind() == "DaemonSet"
		found, err := a.Delete(ctx, u, foreground)
		if err != nil {
			return err
		}
		if found {
			fmt.Fprintf(w, "deleted %s %s\n", u.GetKind(), qualified(u))
		}
		if found && foreground {
			if err := a.WaitGone(wctx, u); err != nil {
				return err
			}
		}
	}
	for _, u := range rev {
		if err := a.WaitGone(wctx, u); err != nil {
			return err
		}
	}
	return nil
}

func qualified(u *unstructured.Unstructured) string {
	if u.GetNamespace() == "" {
		return u.GetName()
	}
	return u.GetNamespace() + "/" + u.GetName()
}

// waitFor polls u until check passes, saying what it waits for when it
// gives up.
func (a *Applier) waitFor(ctx context.Context, u *unstructured.Unstructured, limit time.Duration, check func(*unstructured.Unstructured) error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		cur, err := a.Get(ctx, u)
		if err == nil {
			err = check(cur)
		}
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s is not ready after %v: %v", u.GetKind(), qualified(u), limit, err)
		case <-time.After(time.Second):
		}
	}
}

func established(u *unstructured.Unstructured) error {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			return nil
		}
	}
	return fmt.Errorf("not established yet")
}

func available(u *unstructured.Unstructured) error {
	want, _, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	gen, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	ready, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
	updated, _, _ := unstructured.NestedInt64(u.Object, "status", "updatedReplicas")
	if gen < u.GetGeneration() || ready < want || updated < want {
		return fmt.Errorf("%d of %d replicas ready (see kubectl -n %s describe deployment %s)", ready, want, u.GetNamespace(), u.GetName())
	}
	return nil
}

func everyNode(u *unstructured.Unstructured) error {
	want, _, _ := unstructured.NestedInt64(u.Object, "status", "desiredNumberScheduled")
	gen, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	ready, _, _ := unstructured.NestedInt64(u.Object, "status", "numberReady")
	updated, _, _ := unstructured.NestedInt64(u.Object, "status", "updatedNumberScheduled")
	if gen < u.GetGeneration() || want == 0 || ready < want || updated < want {
		return fmt.Errorf("ready on %d of %d nodes (see kubectl -n %s describe daemonset %s)", ready, want, u.GetNamespace(), u.GetName())
	}
	return nil
}

func caBundleSet(u *unstructured.Unstructured) error {
	hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
	for _, h := range hooks {
		b, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle")
		if b == "" {
			return fmt.Errorf("the control plane has not set its caBundle yet (see its logs: kubectl -n trellis-system logs deploy/trellis-control)")
		}
	}
	return nil
}
