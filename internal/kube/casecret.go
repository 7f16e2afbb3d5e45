package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// ErrConflict is Update's answer when the secret changed since it was
// read: read it again.
var ErrConflict = errors.New("the CA secret changed meanwhile")

// ErrSecretExists is Create's answer when another replica stored its CA
// first: restore that one instead.
var ErrSecretExists = errors.New("the CA secret exists already")

// CASecret keeps a control plane's CA directory (its root, key and
// rotation state) in a Secret, so every replica and every restart signs
// with the same root.
type CASecret struct {
	Client          kubernetes.Interface
	Namespace, Name string
}

// Restore writes the secret's files into dir (mode 0600) and reports
// whether the secret exists.
func (s CASecret) Restore(ctx context.Context, dir string) (bool, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	return true, WriteDir(sec, dir)
}

// Read returns the secret as it is now.
func (s CASecret) Read(ctx context.Context) (*corev1.Secret, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return sec, nil
}

// WriteDir makes dir hold exactly the secret's files.
func WriteDir(sec *corev1.Secret, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if _, ok := sec.Data[e.Name()]; !ok && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for name, data := range sec.Data {
		if name != filepath.Base(name) || name == "." || name == ".." {
			return fmt.Errorf("secret %s: key %q is not a file name", sec.Name, name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Update replaces prev's data with dir's files and sets annotations, only
// if the secret is still prev (ErrConflict otherwise), and returns it as
// stored.
func (s CASecret) Update(ctx context.Context, prev *corev1.Secret, dir string, annotations map[string]string) (*corev1.Secret, error) {
	data, err := dirData(dir)
	if err != nil {
		return nil, err
	}
	sec := prev.DeepCopy()
	sec.Data = data
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	for k, v := range annotations {
		sec.Annotations[k] = v
	}
	out, err := s.Client.CoreV1().Secrets(s.Namespace).Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil, ErrConflict
	}
	if err != nil {
		return nil, fmt.Errorf("store secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return out, nil
}

func dirData(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if data[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
	}
	return data, nil
}

// Create stores every file of dir as a new secret (ErrSecretExists when
// another replica was first).
func (s CASecret) Create(ctx context.Context, dir string) error {
	data, err := dirData(dir)
	if err != nil {
		return err
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace,
		Labels: map[string]string{"app.kubernetes.io/part-of": "trellis"}}, Data: data}
	_, err = s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return ErrSecretExists
	}
	if err != nil {
		return fmt.Errorf("store secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}

// Root rotation on Kubernetes is asked for and answered in annotations of
// the CA secret: `trellis ca rotate --kubernetes` sets AnnotationRotate to
// STEP/NONCE; the control plane replica that takes the step stores the
// new CA state with AnnotationRotated set to the same value (or
// AnnotationRotateError to "VALUE: why"), and every replica reloads it.
const (
	AnnotationRotate      = "trellis.io/rotate"
	AnnotationRotated     = "trellis.io/rotated"
	AnnotationRotateError = "trellis.io/rotate-error"
)

// RequestRotation asks for rotation step (prepare, activate, finish) and
// returns the request's value, for WaitRotation.
func (s CASecret) RequestRotation(ctx context.Context, step string) (string, error) {
	value := fmt.Sprintf("%s/%d", step, time.Now().UnixNano())
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationRotate: value}}})
	if _, err := s.Client.CoreV1().Secrets(s.Namespace).Patch(ctx, s.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return "", fmt.Errorf("ask for rotation step %s: %w", step, err)
	}
	return value, nil
}

// WaitRotation waits until the control plane carried out (or refused)
// the request value.
func (s CASecret) WaitRotation(ctx context.Context, value string) error {
	for {
		sec, err := s.Read(ctx)
		if err != nil {
			return err
		}
		if sec.Annotations[AnnotationRotated] == value {
			return nil
		}
		if msg, ok := strings.CutPrefix(sec.Annotations[AnnotationRotateError], value+": "); ok {
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the control plane did not take the rotation step: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
