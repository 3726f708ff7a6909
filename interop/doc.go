// Package interop holds the tests that read our mesh apiserver with
// Cilium's own code. It is its own module so that the Cilium dependency
// stays out of the product's go.mod.
package interop
