// Package trellis is the root of the Trellis module. It holds no code, only
// repository-wide tests that enforce conventions: every package documents
// itself, and the dependency rules of docs/architecture.md hold.
package trellis
