//go:build !amd64 || purego

package vectors

// dotKernel returns the portable dot product.
func dotKernel() func(a, b []float32) float32 { return dot }

// hasFastDot reports whether dotKernel uses an assembly kernel.
func hasFastDot() bool { return false }
