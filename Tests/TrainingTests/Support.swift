import Foundation
import TestSupport
import Training

/// The project's data directory (filled by scripts/get-data.sh, which scripts/test.sh runs first).
let dataDirectory: String = {
    if let env = ProcessInfo.processInfo.environment["SWIFT_DDP_DATA"] { return env }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("data").path
}()

let configsDirectory: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("configs").path

/// A small GPT config on the real Shakespeare text, quick enough for tests.
func tinyGPTConfig(_ overrides: [String] = [], outDir: String) throws -> TrainConfig {
    try TrainConfig.load(path: configsDirectory + "/tiny-gpt.json",
                         overrides: ["data_dir=\"\(dataDirectory)\"", "out_dir=\"\(outDir)\"", "log_interval=1000"] + overrides)
}


/// `n` ranks of the tiny GPT on the project's data under the launcher built beside the tests, with
/// `args` after the config (--set ..., --out-dir ...); 30 s rendezvous timeout.
func launchTinyGPT(_ n: Int, _ args: [String]) throws -> (status: Int32, output: String, pid: Int32) {
    let build = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    return try runToEnd(build + "/ddp-launch", ["--nproc-per-node", String(n), "--timeout", "30", "--",
                                                configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory] + args)
}
