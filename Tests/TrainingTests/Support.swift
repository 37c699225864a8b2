import Foundation
import Training

/// The project's data directory (filled by scripts/get-data.sh, which scripts/test.sh runs first).
let dataDirectory: String = {
    if let env = ProcessInfo.processInfo.environment["SWIFT_DDP_DATA"] { return env }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("data").path
}()

let configsDirectory: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("configs").path

func temporaryDirectory(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "swift-ddp-tests-\(getpid())-\(name)"
    try? FileManager.default.removeItem(atPath: path)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A small GPT config on the real Shakespeare text, quick enough for tests.
func tinyGPTConfig(_ overrides: [String] = [], outDir: String) throws -> TrainConfig {
    try TrainConfig.load(path: configsDirectory + "/tiny-gpt.json",
                         overrides: ["data_dir=\"\(dataDirectory)\"", "out_dir=\"\(outDir)\"", "log_interval=1000"] + overrides)
}

/// Processes a launcher started that are still alive, found by the SWIFT_DDP_LAUNCHER_PID every rank
/// inherits (so grandchildren count too). Waits up to 10 s for them to go: the kernel delivers
/// PR_SET_PDEATHSIG and SIGKILL asynchronously.
func survivors(ofLauncher pid: Int32) -> [Int32] {
    let marker = Array("SWIFT_DDP_LAUNCHER_PID=\(pid)".utf8)
    func scan() -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { candidate in
            guard let environ = FileManager.default.contents(atPath: "/proc/\(candidate)/environ") else { return false }
            // Zombies already exited; only live processes count.
            if let stat = try? String(contentsOfFile: "/proc/\(candidate)/stat", encoding: .utf8),
               let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] == "Z" { return false }
            return environ.split(separator: 0).contains { Array($0) == marker }
        }
    }
    let deadline = Date().addingTimeInterval(10)
    var alive = scan()
    while !alive.isEmpty && Date() < deadline {
        usleep(50_000)
        alive = scan()
    }
    return alive
}
