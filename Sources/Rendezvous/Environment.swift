import Foundation
import Transport

/// A missing or malformed environment variable, by name.
public struct EnvironmentError: Error, CustomStringConvertible, Equatable {
    public let variable: String
    public let problem: String
    public var description: String { "environment variable \(variable): \(problem)" }
}

/// torchrun's environment, exactly: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
/// MASTER_ADDR, MASTER_PORT (our store's port, unless SWIFT_DDP_STORE_PORT names it: our launcher keeps
/// MASTER_PORT free for the program); plus SWIFT_DDP_SECRET (hex job secret), SWIFT_DDP_JOB_ID and
/// SWIFT_DDP_TIMEOUT (seconds), SWIFT_DDP_RESTART_COUNT (how many times the launcher restarted the
/// group; torchrun's TORCHELASTIC_RESTART_COUNT). Without RANK/WORLD_SIZE a process runs alone (world size 1).
public struct DistributedEnvironment: Sendable, Equatable {
    public var rank = 0
    public var localRank = 0
    public var worldSize = 1
    public var localWorldSize = 1
    public var groupRank = 0
    public var masterAddress = "127.0.0.1"
    public var masterPort = 0
    public var secretHex = ""
    public var jobID = "swift-ddp"
    public var timeoutSeconds: Double = 30
    public var restartCount = 0
    /// Where this rank listens for its peers (SWIFT_DDP_LISTEN_ADDR, set by the launcher; default the
    /// master's address, right when every rank runs on the master's host).
    public var listenAddress: String?
    /// SWIFT_DDP_SPIN_US: how long a wait busy-polls before blocking (overrides the program's choice).
    public var spinMicroseconds: Double?
    /// SWIFT_DDP_CHUNK_KB: bytes per data frame, in KiB.
    public var chunkBytes: Int?
    /// SWIFT_DDP_AUTH_FRAMES=1: every frame after the handshake carries a MAC tag (AES-GCM) (the launcher's
    /// --authenticate-frames sets it for every rank and for its store).
    public var authenticateFrames = false

    public init() {}

    public static func fromProcess(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> DistributedEnvironment {
        var e = DistributedEnvironment()
        func int(_ name: String, _ into: inout Int, min: Int = 0) throws {
            guard let text = env[name] else { return }
            guard let v = Int(text), v >= min else { throw EnvironmentError(variable: name, problem: "'\(text)' is not an integer >= \(min)") }
            into = v
        }
        try int("WORLD_SIZE", &e.worldSize, min: 1)
        try int("RANK", &e.rank)
        try int("LOCAL_RANK", &e.localRank)
        try int("LOCAL_WORLD_SIZE", &e.localWorldSize, min: 1)
        try int("GROUP_RANK", &e.groupRank)
        try int("SWIFT_DDP_RESTART_COUNT", &e.restartCount)
        guard e.rank < e.worldSize else {
            throw EnvironmentError(variable: "RANK", problem: "\(e.rank) is not below WORLD_SIZE \(e.worldSize)")
        }
        if e.worldSize > 1 {
            guard let addr = env["MASTER_ADDR"], !addr.isEmpty else { throw EnvironmentError(variable: "MASTER_ADDR", problem: "required when WORLD_SIZE > 1") }
            e.masterAddress = addr
            // Our launcher hands programs MASTER_PORT for their own use and our store's port separately.
            let portVariable = env["SWIFT_DDP_STORE_PORT"] != nil ? "SWIFT_DDP_STORE_PORT" : "MASTER_PORT"
            guard env[portVariable] != nil else { throw EnvironmentError(variable: "MASTER_PORT", problem: "required when WORLD_SIZE > 1") }
            try int(portVariable, &e.masterPort, min: 1)
            guard e.masterPort <= 65535 else { throw EnvironmentError(variable: portVariable, problem: "\(e.masterPort) is not a TCP port") }
            guard let secret = env["SWIFT_DDP_SECRET"], secret.count >= 32, hexBytes(secret) != nil else {
                throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "required when WORLD_SIZE > 1: at least 16 bytes as hex (the launcher sets it)")
            }
            e.secretHex = secret
        }
        if let listen = env["SWIFT_DDP_LISTEN_ADDR"], !listen.isEmpty { e.listenAddress = listen }
        if let job = env["SWIFT_DDP_JOB_ID"], !job.isEmpty { e.jobID = job }
        if let t = env["SWIFT_DDP_TIMEOUT"] {
            guard let v = Double(t), v > 0 else { throw EnvironmentError(variable: "SWIFT_DDP_TIMEOUT", problem: "'\(t)' is not a positive number of seconds") }
            e.timeoutSeconds = v
        }
        if let text = env["SWIFT_DDP_SPIN_US"], !text.isEmpty {
            guard let v = Double(text), v >= 0, v <= 1e6 else { throw EnvironmentError(variable: "SWIFT_DDP_SPIN_US", problem: "'\(text)' is not a number of microseconds in 0...1000000") }
            e.spinMicroseconds = v
        }
        if let text = env["SWIFT_DDP_AUTH_FRAMES"], !text.isEmpty {
            guard text == "0" || text == "1" else { throw EnvironmentError(variable: "SWIFT_DDP_AUTH_FRAMES", problem: "'\(text)' must be 0 or 1") }
            e.authenticateFrames = text == "1"
        }
        if let text = env["SWIFT_DDP_CHUNK_KB"], !text.isEmpty {
            guard let v = Int(text), v >= 1, v <= FrameHeader.maxLength >> 10 else {
                throw EnvironmentError(variable: "SWIFT_DDP_CHUNK_KB", problem: "'\(text)' is not a whole number of KiB in 1...\(FrameHeader.maxLength >> 10)")
            }
            e.chunkBytes = v << 10
        }
        return e
    }

    /// Each restart is its own rendezvous: a rank of attempt k cannot join a store or a peer left over
    /// from attempt k-1.
    public var identity: JobIdentity {
        JobIdentity(jobID: attemptJobID(jobID, restart: restartCount), worldSize: worldSize, secret: hexBytes(secretHex) ?? [],
                    authenticateFrames: authenticateFrames)
    }
}

public func hexBytes(_ text: String) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    for i in stride(from: 0, to: chars.count, by: 2) {
        guard let hi = hexValue(chars[i]), let lo = hexValue(chars[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
    }
    return out
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 48...57: return c - 48
    case 97...102: return c - 87
    case 65...70: return c - 55
    default: return nil
    }
}

public func hexString(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// The job id one attempt of a job authenticates with.
public func attemptJobID(_ jobID: String, restart: Int) -> String { restart == 0 ? jobID : "\(jobID)#restart\(restart)" }
