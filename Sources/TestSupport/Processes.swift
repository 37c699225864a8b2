import Foundation

/// Processes a launcher started that are still alive, found by the SWIFT_DDP_LAUNCHER_PID every rank
/// inherits (so grandchildren count too). Waits up to 10 s for them to go: the kernel delivers
/// PR_SET_PDEATHSIG and SIGKILL asynchronously.
public func survivors(ofLauncher pid: Int32) -> [Int32] {
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
