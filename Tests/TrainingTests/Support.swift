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

