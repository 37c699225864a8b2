import CShims
#if canImport(Glibc)
import Glibc
#endif

/// What the CPU we run on offers, read once from /proc/cpuinfo (Linux). Used to pick a GEMM
/// micro-kernel whose register block fits the vector register file.
public struct CPUFeatures: Sendable, Equatable {
    public var avx2: Bool
    public var fma: Bool
    public var avx512f: Bool
    public var modelName: String

    public static let current: CPUFeatures = detect()

    /// The CPU this build was compiled for: SWIFT_DDP_TARGET_CPU when it was built, "native" otherwise.
    public static var buildTargetCPU: String { String(cString: ddp_build_target_cpu()) }
    /// Whether the kernels were compiled with AVX-512. A build for an AVX2 CPU that runs on an AVX-512
    /// one keeps the 6x16 kernel: without zmm registers the 6x32 one's SIMD16 accumulators are split
    /// into ymm halves, 24 of them for 16 registers.
    public static var builtWithAVX512F: Bool { ddp_built_with_avx512f() != 0 }

    static func detect() -> CPUFeatures {
        let text = readTextFile("/proc/cpuinfo") ?? ""
        var flags = Set<Substring>()
        var model = "unknown"
        for line in text.split(separator: "\n") {
            if flags.isEmpty, line.hasPrefix("flags") {
                if let colon = line.firstIndex(of: ":") {
                    flags = Set(line[line.index(after: colon)...].split(separator: " "))
                }
            } else if model == "unknown", line.hasPrefix("model name"), let colon = line.firstIndex(of: ":") {
                model = String(line[line.index(after: colon)...].drop(while: { $0 == " " }))
            }
        }
        return CPUFeatures(avx2: flags.contains("avx2"), fma: flags.contains("fma"),
                           avx512f: flags.contains("avx512f"), modelName: model)
    }
}

/// Reads a small text file whole with plain stdio, or nil when it cannot be opened.
func readTextFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}
