import CShims
import Glibc

/// What /proc/cpuinfo says of the first CPU: its model name and its flags.
public struct CPUInfo: Sendable, Equatable {
    public var modelName: String
    public var flags: Set<String>

    /// The first "flags" and "model name" lines of a /proc/cpuinfo text.
    public init(parsing text: String) {
        var flags: Set<String>? = nil
        var model: String? = nil
        for line in text.split(separator: "\n") where flags == nil || model == nil {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed()
            let value = line[line.index(after: colon)...]
            if String(key) == "flags", flags == nil {
                flags = Set(value.split(separator: " ").map(String.init))
            } else if String(key) == "model name", model == nil {
                model = String(value.drop(while: { $0 == " " }))
            }
        }
        self.modelName = model ?? "unknown"
        self.flags = flags ?? []
    }

    /// This machine's: /proc/cpuinfo, or the file SWIFT_DDP_CPUINFO names (how the tests show a rank a
    /// CPU it does not have).
    public static func read() -> CPUInfo {
        let path = getenv("SWIFT_DDP_CPUINFO").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/proc/cpuinfo"
        return CPUInfo(parsing: readTextFile(path) ?? "")
    }
}

/// A build for instructions this CPU lacks (SWIFT_DDP_TARGET_CPU set to a newer CPU, or a build directory
/// shared by hosts of different CPUs): its kernels would die of SIGILL somewhere inside the first step.
public struct BuildCPUMismatch: Error, CustomStringConvertible, Equatable {
    public var target: String
    public var missing: [String]
    public var modelName: String
    public var host: String

    public var description: String {
        let built = target == "native" ? "the CPU of the host that built it" : target
        return "this build was compiled for \(built) and uses instructions this host's CPU (\(modelName) on \(host)) lacks: "
            + missing.joined(separator: " ") + ". Rebuild on this host (bash scripts/setup.sh), or build once with "
            + "SWIFT_DDP_TARGET_CPU set to the oldest CPU among the hosts (e.g. haswell for any AVX2 CPU)"
    }
}

public enum BuildCPU {
    /// The CPU the build was compiled for: SWIFT_DDP_TARGET_CPU when it was built, "native" otherwise.
    public static var target: String { String(cString: ddp_build_target_cpu()) }
    /// The /proc/cpuinfo flags of the instruction sets the build was compiled to use (ddp_build_cpu_flags).
    public static var requiredFlags: [String] { String(cString: ddp_build_cpu_flags()).split(separator: " ").map(String.init) }

    /// Throws when the CPU lacks an instruction set the build uses. Called first by every program that
    /// runs kernels, so a wrong build stops with this line instead of SIGILL in a kernel: this module and
    /// the check are compiled for baseline x86-64.
    public static func requireRunnable(on cpu: CPUInfo = .read()) throws {
        let missing = requiredFlags.filter { !cpu.flags.contains($0) }
        guard !missing.isEmpty, !cpu.flags.isEmpty else { return }
        var name = [UInt8](repeating: 0, count: 256)
        let named = name.withUnsafeMutableBufferPointer { gethostname(UnsafeMutableRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), $0.count - 1) } == 0
        let host = named ? String(decoding: name.prefix { $0 != 0 }, as: UTF8.self) : "this host"
        throw BuildCPUMismatch(target: target, missing: missing, modelName: cpu.modelName, host: host)
    }
}

/// Reads a small text file whole with plain stdio, or nil when it cannot be opened.
public func readTextFile(_ path: String) -> String? {
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
