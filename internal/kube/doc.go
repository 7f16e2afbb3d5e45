// Package kube is Trellis's Kubernetes side: the discovery source fed by
// informers, TokenReview attestation of first certificates, the CA root
// kept in a Secret, the injection webhook's registration, and applying the
// objects `trellis install` renders. With internal/kubeclient (the
// connection) and the node agent's source, it is the only code that links
// client-go: the proxy never does.
package kube
