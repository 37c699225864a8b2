import Foundation

/// One directory per test process, `$TMPDIR/swift-ddp-tests-<pid>`, removed when the process exits, so
/// a run of the suite (hundreds of checkpoints and logs) leaves nothing behind in /tmp.
/// `SWIFT_DDP_KEEP_TEST_FILES=1` keeps it, for reading a failed test's files afterwards.
public let scratchRoot: String = {
    let root = NSTemporaryDirectory() + "swift-ddp-tests-\(getpid())"
    try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    if ProcessInfo.processInfo.environment["SWIFT_DDP_KEEP_TEST_FILES"] != "1" {
        atexit { removeScratchRoot() }
    } else {
        print("test files are kept in \(root)")
    }
    return root
}()

private func removeScratchRoot() {
    try? FileManager.default.removeItem(atPath: scratchRoot)
}

/// An empty directory `name` inside the process's scratch root.
public func scratchDirectory(_ name: String) -> String {
    let path = scratchRoot + "/" + name
    try? FileManager.default.removeItem(atPath: path)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A path for a file `name` inside the process's scratch root (nothing is created).
public func scratchFile(_ name: String) -> String { scratchRoot + "/" + name }
