import Support

/// What the CPU we run on offers, read once from /proc/cpuinfo (Linux; Support's CPUInfo). Used to pick a GEMM
/// micro-kernel whose register block fits the vector register file.
public struct CPUFeatures: Sendable, Equatable {
    public var avx2: Bool
    public var fma: Bool
    public var avx512f: Bool
    public var modelName: String

    public static let current: CPUFeatures = detect()

    /// Whether the kernels were compiled with AVX-512. A build for an AVX2 CPU that runs on an AVX-512
    /// one keeps the 6x16 kernel: without zmm registers the 6x32 one's SIMD16 accumulators are split
    /// into ymm halves, 24 of them for 16 registers.
    public static let builtWithAVX512F = BuildCPU.requiredFlags.contains("avx512f")

    static func detect() -> CPUFeatures {
        let info = CPUInfo.read()
        return CPUFeatures(avx2: info.flags.contains("avx2"), fma: info.flags.contains("fma"),
                           avx512f: info.flags.contains("avx512f"), modelName: info.modelName)
    }
}
