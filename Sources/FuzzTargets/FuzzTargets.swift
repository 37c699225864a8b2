import Datasets
import Foundation
import NN
import Rendezvous
import Training
import Transport

/// Every parser that reads bytes from outside the process, as one function each: bytes in, a verdict
/// out, never a crash. libFuzzer (scripts/fuzz.sh) and a seeded random-input harness (ddp-fuzz, the
/// tests) both drive these.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case frame, handshake, store, config, checkpoint, mnist

    /// Runs one input. Returning normally is success whatever the input (refusing it is fine);
    /// a crash or a hang is the bug.
    public func run(_ input: [UInt8]) {
        switch self {
        case .frame: fuzzFrame(input)
        case .handshake: fuzzHandshake(input)
        case .store: fuzzStore(input)
        case .config: _ = try? TrainConfig.load(json: Data(input), file: "fuzz.json")
        case .checkpoint: _ = try? LoadedCheckpoint(data: Data(input), path: "fuzz.safetensors")
        case .mnist: fuzzMNIST(input)
        }
    }
}

/// A frame header decodes to a frame with sane fields or to an error.
func fuzzFrame(_ input: [UInt8]) {
    var bytes = input
    if bytes.count < FrameHeader.size { bytes += [UInt8](repeating: 0, count: FrameHeader.size - bytes.count) }
    bytes.withUnsafeBytes { raw in
        if case .success(let header) = FrameHeader.decode(raw.baseAddress!, maxLength: 1 << 20) {
            precondition(header.length >= 0 && header.length <= 1 << 20, "decoded a length outside the bound")
        }
    }
}

/// The acceptor side of the handshake reading `input` from a peer that then hangs up.
func fuzzHandshake(_ input: [UInt8]) {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { return }
    defer { close(fds[1]) }
    // Whatever fits in the socket buffer; the rest would only block us.
    _ = input.withUnsafeBytes { send(fds[1], $0.baseAddress, min($0.count, 64 << 10), Int32(MSG_DONTWAIT)) }
    shutdown(fds[1], Int32(SHUT_WR))
    let connection = Connection(fd: fds[0], peer: PeerDescription(host: "fuzz", port: 0),
                                policy: WaitPolicy(timeoutSeconds: 0.2, spinMicroseconds: 0))
    defer { connection.close() }
    let identity = JobIdentity(jobID: "fuzz-job", worldSize: 4, secret: Array(repeating: 7, count: 16))
    if let rank = try? Handshake.accept(connection, identity: identity) {
        preconditionFailure("a peer without the secret passed the handshake as rank \(rank)")
    }
}

/// Store requests against one long-lived store (values persist between inputs, as in a job).
func fuzzStore(_ input: [UInt8]) {
    let reply = FuzzStore.server.handle(input)
    precondition(!reply.isEmpty, "store sent an empty reply")
}

enum FuzzStore {
    static let server: StoreServer = {
        // The listener is never used: requests go straight to the protocol handler.
        try! StoreServer(host: "127.0.0.1", port: 0, identity: JobIdentity(jobID: "fuzz", worldSize: 1, secret: [1]))
    }()
}

/// The first 4 bytes say where the images file ends and the labels file starts.
func fuzzMNIST(_ input: [UInt8]) {
    guard input.count >= 4 else { return }
    let split = 4 + Int(UInt32(input[0]) | UInt32(input[1]) << 8 | UInt32(input[2]) << 16 | UInt32(input[3]) << 24) % (input.count - 3)
    let dir = NSTemporaryDirectory() + "ddp-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    _ = FileManager.default.createFile(atPath: dir + "/images", contents: Data(input[4..<split]))
    _ = FileManager.default.createFile(atPath: dir + "/labels", contents: Data(input[split...]))
    _ = try? MNIST(imagesPath: dir + "/images", labelsPath: dir + "/labels")
}

/// Random edits in the style of libFuzzer's default mutators: flip bits, set bytes to interesting
/// values, insert, delete, duplicate a span, splice with another corpus entry, overwrite 4-byte ints.
public struct Mutator {
    var state: UInt64
    public init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }

    public mutating func mutate(_ input: [UInt8], corpus: [[UInt8]], maxLength: Int = 4096) -> [UInt8] {
        var out = input
        for _ in 0..<(1 + below(4)) {
            switch below(8) {
            case 0 where !out.isEmpty: out[below(out.count)] ^= UInt8(1 << below(8))
            case 1 where !out.isEmpty: out[below(out.count)] = [0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x7B, 0x7D][below(8)]
            case 2: out.insert(UInt8(truncatingIfNeeded: next()), at: below(out.count + 1))
            case 3 where !out.isEmpty: out.remove(at: below(out.count))
            case 4 where out.count >= 2:
                let a = below(out.count), b = min(out.count, a + 1 + below(16))
                out.insert(contentsOf: out[a..<b], at: below(out.count + 1))
            case 5 where !corpus.isEmpty:
                let other = corpus[below(corpus.count)]
                out = Array(out.prefix(below(out.count + 1))) + Array(other.suffix(below(other.count + 1)))
            case 6 where out.count >= 4:
                let at = below(out.count - 3)
                let value: UInt32 = [0, 1, 0xFFFF_FFFF, 0x7FFF_FFFF, 0x8000_0000, UInt32(out.count), 16, 24][below(8)]
                for k in 0..<4 { out[at + k] = UInt8(truncatingIfNeeded: value >> (8 * k)) }
            case 7 where out.count > 1: out.removeLast(below(out.count))
            default: out.append(UInt8(truncatingIfNeeded: next()))
            }
        }
        return Array(out.prefix(maxLength))
    }
}

/// Seeded random-input run: every corpus entry, then mutations of them until `executions` inputs or
/// `seconds` pass. `beforeEach` sees each input first (to save it for a crash report). Returns the
/// number of inputs run.
@discardableResult
public func runSeeded(_ target: FuzzTarget, corpus: [[UInt8]], seed: UInt64, executions: Int, seconds: Double,
                      beforeEach: ([UInt8]) -> Void = { _ in }) -> Int {
    var mutator = Mutator(seed: seed)
    let start = Date()
    var count = 0
    let seeds = corpus.isEmpty ? [[]] : corpus
    for input in seeds { beforeEach(input); target.run(input); count += 1 }
    while count < executions && Date().timeIntervalSince(start) < seconds {
        let input = mutator.mutate(seeds[mutator.below(seeds.count)], corpus: seeds)
        beforeEach(input)
        target.run(input)
        count += 1
    }
    return count
}

/// Reads the corpus directory of one target (every file is one input).
public func loadCorpus(_ directory: String) -> [[UInt8]] {
    let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    return names.compactMap { FileManager.default.contents(atPath: directory + "/" + $0).map { Array($0) } }
}

/// Valid inputs for each target, made by our own encoders: the starting corpus (scripts/fuzz.sh writes
/// them to fuzz/corpus/TARGET when it is empty) from which mutations reach the interesting edges.
public func seedInputs(_ target: FuzzTarget, configsDirectory: String = "configs") -> [[UInt8]] {
    func frame(_ type: FrameHeader.MessageType, _ payload: [UInt8]) -> [UInt8] {
        let sum = payload.withUnsafeBytes { checksum($0) }
        return FrameHeader(type: type, tag: 0, length: payload.count, payloadChecksum: sum).encoded() + payload
    }
    switch target {
    case .frame:
        return [FrameHeader(type: .data, tag: 7, length: 4096).encoded(),
                FrameHeader(type: .storeRequest, tag: 0, length: 12, payloadChecksum: 0x1234_5678).encoded()]
    case .handshake:
        var hello = ByteWriter()
        hello.string("fuzz-job"); hello.u32(4); hello.i32(1); hello.bytes([UInt8](repeating: 9, count: 32))
        var wrongJob = ByteWriter()
        wrongJob.string("other-job"); wrongJob.u32(4); wrongJob.i32(2); wrongJob.bytes([UInt8](repeating: 3, count: 32))
        return [frame(.hello, hello.data), frame(.hello, wrongJob.data) + frame(.proof, [UInt8](repeating: 1, count: 32))]
    case .store:
        func request(_ op: UInt8, _ key: String, _ value: [UInt8]) -> [UInt8] {
            var w = ByteWriter(); w.bytes([op]); w.blob(Array(key.utf8)); w.blob(value); return w.data
        }
        var delta = ByteWriter(); delta.i64(5)
        return [request(1, "addr/0", Array("127.0.0.1|40000".utf8)), request(2, "addr/0", []), request(3, "counter", delta.data)]
    case .config:
        let names = (try? FileManager.default.contentsOfDirectory(atPath: configsDirectory)) ?? []
        let files = names.filter { $0.hasSuffix(".json") }.sorted().compactMap { FileManager.default.contents(atPath: configsDirectory + "/" + $0) }
        return files.map { Array($0) } + [Array(#"{"model": "mlp", "dataset": "mnist", "epochs": null, "zero_stage": 1}"#.utf8)]
    case .checkpoint:
        let values: [Float] = [1, -2, 3.5, 0]
        let path = NSTemporaryDirectory() + "ddp-fuzz-seed-\(getpid()).safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let written: Void? = values.withUnsafeBufferPointer { buffer in
            try? Checkpoint(tensors: [("w", [2, 2], buffer)], metadata: ["format": "swift-ddp-checkpoint", "iteration": "3"]).write(to: path)
        }
        guard written != nil, let data = FileManager.default.contents(atPath: path) else { return [] }
        return [Array(data)]
    case .mnist:
        // Split offset 16 + 2 * 4 pixels, then images (magic 2051, 2 images of 2x2) and labels (magic 2049).
        let images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 255, 128, 7, 1, 2, 3, 4]
        let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 2, 3, 9]
        let split = UInt32(images.count)
        return [[UInt8(split & 0xFF), UInt8(split >> 8 & 0xFF), 0, 0] + images + labels]
    }
}
