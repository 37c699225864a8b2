import Foundation

/// Live processes a launcher started, found now by the SWIFT_DDP_LAUNCHER_PID every rank inherits (so
/// grandchildren count too). Zombies have already exited and do not count.
public func processes(startedBy launcher: Int32) -> [Int32] { processes(withVariable: "SWIFT_DDP_LAUNCHER_PID=\(launcher)") }

/// Live processes whose environment holds `assignment` ("NAME=value"), e.g. a tag a test gave srun or
/// mpirun, which every rank inherits.
public func processes(withVariable assignment: String) -> [Int32] {
    let marker = Array(assignment.utf8)
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

/// Runs a program to its end with stdout and stderr in one pipe; `environment` entries are added to
/// this process's environment.
public func runToEnd(_ executable: String, _ arguments: [String],
                     environment: [String: String] = [:]) throws -> (status: Int32, output: String, pid: Int32) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self), process.processIdentifier)
}

/// The rank pids a launcher printed ("[launcher] rank N: pid P on HOST"), in the order it started them.
public func launcherRankPIDs(_ output: String) -> [Int32] {
    output.split(separator: "\n").compactMap { line -> Int32? in
        guard line.hasPrefix("[launcher] rank "), let r = line.range(of: "pid ") else { return nil }
        return Int32(line[r.upperBound...].prefix { $0.isNumber })
    }
}

/// Starts a launcher (or any program) and reads its merged output until `marker` has appeared
/// `occurrences` times, or the output ends; returns the process, the pipe to read the rest from, and
/// what was read.
public func startLauncher(_ executable: String, _ arguments: [String], until marker: String,
                          occurrences: Int = 1, environment: [String: String] = [:]) throws -> (Process, FileHandle, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    var output = ""
    while output.components(separatedBy: marker).count - 1 < occurrences {
        let data = pipe.fileHandleForReading.availableData
        if data.isEmpty { break }
        output += String(decoding: data, as: UTF8.self)
    }
    return (process, pipe.fileHandleForReading, output)
}
