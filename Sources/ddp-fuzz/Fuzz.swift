import FuzzTargets
import Foundation

#if FUZZING
// libFuzzer build (scripts/fuzz.sh): libFuzzer supplies main; FUZZ_TARGET picks the parser.
enum Selected {
    static let target: FuzzTarget = {
        let name = ProcessInfo.processInfo.environment["FUZZ_TARGET"] ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("ddp-fuzz: set FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))\n".utf8))
            exit(2)
        }
        return target
    }()
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    Selected.target.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM links every executable's entry point under the name <module>_main; hand it to libFuzzer.
@_cdecl("ddp_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
}
#else
import ArgumentParser

/// The seeded random-input harness (no libFuzzer needed): ddp-fuzz TARGET --seconds 10 --corpus DIR.
/// On a crash the input that caused it is written to --crash-dir before the process dies.
@main
struct DDPFuzz: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ddp-fuzz",
                                                    abstract: "Seeded random-input fuzzing of one parser (frame, handshake, store, config, checkpoint, mnist).")
    @Argument(help: "Target: frame, handshake, store, config, checkpoint or mnist.") var target: String
    @Option(help: "Seconds to run.") var seconds: Double = 10
    @Option(help: "Stop after this many inputs.") var executions = Int.max
    @Option(help: "Corpus directory (default fuzz/corpus/TARGET).") var corpus: String?
    @Option(help: "Where a crashing input is saved.") var crashDir = "fuzz/crashes"
    @Option(help: "Random seed.") var seed: UInt64 = 1

    func run() throws {
        guard let fuzzTarget = FuzzTarget(rawValue: target) else {
            throw ValidationError("unknown target '\(target)': one of \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let directory = corpus ?? "fuzz/corpus/\(target)"
        if loadCorpus(directory).isEmpty {
            // Start from valid inputs made by our own encoders.
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (i, seed) in seedInputs(fuzzTarget).enumerated() {
                _ = FileManager.default.createFile(atPath: "\(directory)/seed-\(i)", contents: Data(seed))
            }
        }
        let inputs = loadCorpus(directory)
        try FileManager.default.createDirectory(atPath: crashDir, withIntermediateDirectories: true)
        CrashCapture.arm(path: "\(crashDir)/crash-\(target)-seed\(seed)")
        let start = Date()
        let count = runSeeded(fuzzTarget, corpus: inputs, seed: seed, executions: executions, seconds: seconds,
                              beforeEach: CrashCapture.remember)
        let elapsed = Date().timeIntervalSince(start)
        print(String(format: "ddp-fuzz %@: %d inputs in %.1f s (%.0f/s) from %d corpus entries, seed %llu, no crash",
                     target, count, elapsed, Double(count) / max(elapsed, 1e-9), inputs.count, seed))
    }
}

/// Keeps the current input where a signal handler can write it out (open/write are async-signal-safe).
enum CrashCapture {
    nonisolated(unsafe) static var buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: 1 << 16)
    nonisolated(unsafe) static var length = 0
    nonisolated(unsafe) static var path: UnsafeMutablePointer<CChar>?

    static func arm(path: String) {
        self.path = strdup(path)
        for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE] {
            signal(sig) { received in
                if let path = CrashCapture.path {
                    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                    if fd >= 0 { _ = write(fd, CrashCapture.buffer, CrashCapture.length); close(fd) }
                    let note = "ddp-fuzz: crashed; input saved\n"
                    _ = note.withCString { write(2, $0, strlen($0)) }
                }
                signal(received, SIG_DFL)
                raise(received)
            }
        }
    }

    static func remember(_ input: [UInt8]) {
        length = min(input.count, 1 << 16)
        if length > 0 { input.withUnsafeBufferPointer { buffer.update(from: $0.baseAddress!, count: length) } }
    }
}
#endif
