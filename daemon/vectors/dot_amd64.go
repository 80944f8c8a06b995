//go:build amd64 && !purego

package vectors

// dotAVX2 is the dot product with AVX2 and FMA; len(b) >= len(a).
//
//go:noescape
func dotAVX2(a, b []float32) float32

func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

func xgetbv() (eax, edx uint32)

// hasAVX2FMA reports whether the CPU has AVX2 and FMA and the OS saves the
// YMM registers.
func hasAVX2FMA() bool {
	maxID, _, _, _ := cpuid(0, 0)
	if maxID < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	const (
		fma     = 1 << 12
		osxsave = 1 << 27
		avx     = 1 << 28
	)
	if ecx1&fma == 0 || ecx1&osxsave == 0 || ecx1&avx == 0 {
		return false
	}
	if xcr0, _ := xgetbv(); xcr0&0b110 != 0b110 { // XMM and YMM state enabled
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	return ebx7&(1<<5) != 0 // AVX2
}

// dotKernel returns the fastest dot product this CPU supports.
func dotKernel() func(a, b []float32) float32 {
	if hasAVX2FMA() {
		return dotAVX2
	}
	return dot
}

// hasFastDot reports whether dotKernel uses the assembly kernel.
func hasFastDot() bool { return hasAVX2FMA() }
