// One step of a pipeline schedule, in PyTorch's action notation (torch.distributed.pipelining):
// "<stage><kind><micro-batch>", e.g. "2F0" = stage 2 runs forward on micro-batch 0, "1SEND_F3" = stage 1
// sends micro-batch 3's activation to stage 2, "0RECV_B1" = stage 0 receives micro-batch 1's gradient
// from stage 1. B is a whole backward pass; a zero-bubble schedule splits it into I (gradient of the
// input, which the previous stage waits for) and W (gradient of the weights, which nobody waits for).
// STEP is the optimizer step that ends a rank's list.

public struct PipelineAction: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, CaseIterable, Sendable {
        case forward = "F", backward = "B", backwardInput = "I", backwardWeight = "W"
        case sendActivation = "SEND_F", receiveActivation = "RECV_F", sendGradient = "SEND_B", receiveGradient = "RECV_B"
        case step = "STEP"

        public var isCompute: Bool { [.forward, .backward, .backwardInput, .backwardWeight, .step].contains(self) }
        public var isSend: Bool { self == .sendActivation || self == .sendGradient }
        public var isReceive: Bool { self == .receiveActivation || self == .receiveGradient }
    }

    public var stage: Int
    public var kind: Kind
    public var microbatch: Int

    public init(_ stage: Int, _ kind: Kind, _ microbatch: Int) {
        self.stage = stage; self.kind = kind; self.microbatch = microbatch
    }

    public static let step = PipelineAction(0, .step, 0)

    public var description: String { kind == .step ? "STEP" : "\(stage)\(kind.rawValue)\(microbatch)" }

    /// Parses the notation ("2F0", "1SEND_B3", "STEP"); nil for anything else.
    public init?(_ text: String) {
        if text == "STEP" { self = .step; return }
        let digits = Set("0123456789")
        let stage = text.prefix { digits.contains($0) }
        let microbatch = String(text.reversed().prefix { digits.contains($0) }.reversed())
        guard !stage.isEmpty, !microbatch.isEmpty, stage.count + microbatch.count < text.count,
              let s = Int(stage), let m = Int(microbatch),
              let kind = Kind(rawValue: String(text.dropFirst(stage.count).dropLast(microbatch.count))), kind != .step else { return nil }
        self.init(s, kind, m)
    }
}
