import Foundation

/// Live processes a launcher started, found now by the SWIFT_DDP_LAUNCHER_PID every rank inherits (so
/// grandchildren count too). Zombies have already exited and do not count.
public func processes(startedBy launcher: Int32) -> [Int32] {
    let marker = Array("SWIFT_DDP_LAUNCHER_PID=\(launcher)".utf8)
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap(Int32.init).filter { candidate in
        guard let environ = FileManager.default.contents(atPath: "/proc/\(candidate)/environ") else { return false }
        if let stat = try? String(contentsOfFile: "/proc/\(candidate)/stat", encoding: .utf8),
           let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] == "Z" { return false }
        return environ.split(separator: 0).contains { Array($0) == marker }
    }
}

/// The processes a launcher started that are still alive after up to `seconds` (the kernel delivers
/// PR_SET_PDEATHSIG and SIGKILL asynchronously, so give them a moment to go).
public func survivors(ofLauncher pid: Int32, seconds: Double = 10) -> [Int32] {
    let deadline = Date().addingTimeInterval(seconds)
    var alive = processes(startedBy: pid)
    while !alive.isEmpty && Date() < deadline {
        usleep(5_000)
        alive = processes(startedBy: pid)
    }
    return alive
}
