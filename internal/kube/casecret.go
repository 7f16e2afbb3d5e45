package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrSecretExists is Save's answer when another replica stored its CA
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
	for name, data := range sec.Data {
		if name != filepath.Base(name) || name == "." || name == ".." {
			return false, fmt.Errorf("secret %s/%s: key %q is not a file name", s.Namespace, s.Name, name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return false, err
		}
	}
	return true, nil
}

// Save stores every file of dir in the secret: creating it when create is
// set (ErrSecretExists when another replica was first), else replacing
// its data.
func (s CASecret) Save(ctx context.Context, dir string, create bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	data := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if data[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace,
		Labels: map[string]string{"app.kubernetes.io/part-of": "trellis"}}, Data: data}
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	if create {
		_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return ErrSecretExists
		}
	} else {
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("store secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}
