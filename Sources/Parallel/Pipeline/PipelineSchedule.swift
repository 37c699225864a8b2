// Pipeline schedules as pure values: for (p ranks, m micro-batches, v chunks per rank) each rank's list
// of actions. Stage s of the p·v stages lives on rank s mod p (Megatron's interleaved layout: with 16
// layers, p 4, v 2, rank 0 holds stages 0 and 4 = layers 1–2 and 9–10). The compute order is the
// schedule; receives go right before the compute that needs them and sends right after the compute
// that produced them (sends are asynchronous, so a rank never waits on its own send).
//
//   gpipe        every forward, then every backward: m activations alive per rank.
//   1f1b         PipeDream-Flush: p−1−r warm-up forwards on rank r, then one forward / one backward,
//                then the remaining backwards: at most p−r alive. Bubble (p−1)/(m+p−1) of the step.
//   interleaved  Megatron's interleaved 1F1B over v ≥ 2 chunks per rank (m a multiple of p): the
//                bubble shrinks to (p−1)/(v·m+p−1).
//   zb-h1        Zero Bubble H1 (Qi et al. 2023): 1F1B's order of forwards and input-gradient passes
//                (I); each weight-gradient pass (W) fills time the rank would otherwise wait, as
//                found by running the order at unit costs (F = I = W), never keeping more than p
//                micro-batches' activations (1F1B's peak). Bubble (p−1)/(3m+p−1) at equal costs.

public enum PipelineScheduleKind: String, CaseIterable, Sendable, Codable {
    case gpipe
    case oneFOneB = "1f1b"
    case interleaved
    case zeroBubbleH1 = "zb-h1"
}

public struct PipelineSchedule: Sendable, Equatable {
    public let kind: PipelineScheduleKind
    public let pipelineParallel: Int
    public let microbatches: Int
    public let virtualStages: Int
    /// Each rank's actions, communication and the final STEP included.
    public let actions: [[PipelineAction]]

    public var stageCount: Int { pipelineParallel * virtualStages }
    public func rank(ofStage stage: Int) -> Int { stage % pipelineParallel }
    public func stages(ofRank rank: Int) -> [Int] { (0..<virtualStages).map { $0 * pipelineParallel + rank } }

    /// The schedule `kind` for p ranks, m micro-batches and v chunks per rank; a combination that
    /// cannot work is refused naming its config key.
    public init(_ kind: PipelineScheduleKind, pipelineParallel p: Int, microbatches m: Int, virtualStages v: Int = 1) throws {
        guard p >= 1 else { throw LayoutError(key: "pipeline_parallel", "\(p) must be at least 1") }
        guard m >= 1 else { throw LayoutError(key: "microbatches", "\(m) must be at least 1") }
        guard v >= 1 else { throw LayoutError(key: "virtual_stages", "\(v) must be at least 1") }
        switch kind {
        case .interleaved:
            guard v >= 2 else { throw LayoutError(key: "virtual_stages", "the interleaved schedule needs at least 2 chunks per rank (got \(v)); use 1f1b for one") }
            guard m % p == 0 else { throw LayoutError(key: "microbatches", "\(m) is not a multiple of pipeline_parallel \(p), which the interleaved schedule needs") }
        default:
            guard v == 1 else { throw LayoutError(key: "virtual_stages", "\(v) chunks per rank need pipeline_schedule \"interleaved\" (not \"\(kind.rawValue)\")") }
            if kind != .gpipe && m < p {
                throw LayoutError(key: "microbatches", "\(m) is fewer than pipeline_parallel \(p): \(kind.rawValue) needs at least p micro-batches to fill the pipeline (gpipe takes fewer)")
            }
        }
        let compute: [[PipelineAction]]
        switch kind {
        case .gpipe: compute = (0..<p).map { r in (0..<m).map { PipelineAction(r, .forward, $0) } + (0..<m).map { PipelineAction(r, .backward, $0) } }
        case .oneFOneB: compute = (0..<p).map { Self.oneFOneB(p: p, m: m, rank: $0) }
        case .interleaved: compute = (0..<p).map { Self.interleaved(p: p, m: m, v: v, rank: $0) }
        case .zeroBubbleH1: compute = Self.zeroBubbleH1(p: p, m: m)
        }
        self.init(kind: kind, pipelineParallel: p, microbatches: m, virtualStages: v,
                  actions: Self.withCommunication(compute, p: p, stages: p * v))
    }

    /// A schedule from explicit lists (hand-made, or altered in a test); `PipelineSimulator` checks it.
    public init(kind: PipelineScheduleKind, pipelineParallel: Int, microbatches: Int, virtualStages: Int, actions: [[PipelineAction]]) {
        self.kind = kind; self.pipelineParallel = pipelineParallel; self.microbatches = microbatches
        self.virtualStages = virtualStages; self.actions = actions
    }

    /// The textbook bubble, as a share of the step, when communication is free (and F = I = W for zb-h1).
    public var formulaBubble: Double {
        let p = Double(pipelineParallel), m = Double(microbatches), v = Double(virtualStages)
        switch kind {
        case .gpipe, .oneFOneB: return (p - 1) / (m + p - 1)
        case .interleaved: return (p - 1) / (v * m + p - 1)
        case .zeroBubbleH1: return (p - 1) / (3 * m + p - 1)
        }
    }

    /// The transformer blocks of each stage: contiguous, equal ranges (the embeddings go with stage 0,
    /// the final LayerNorm and head with the last).
    public func layerRanges(layers: Int) throws -> [Range<Int>] {
        guard layers % stageCount == 0 else {
            throw LayoutError(key: "n_layer", "\(layers) layers do not split into \(stageCount) equal stages (pipeline_parallel \(pipelineParallel) × virtual_stages \(virtualStages))")
        }
        let per = layers / stageCount
        return (0..<stageCount).map { $0 * per..<($0 + 1) * per }
    }

    /// One line per rank: "rank 0: 0F0 0SEND_F0 0F1 ...".
    public var table: String {
        actions.enumerated().map { "rank \($0.offset): " + $0.element.map(\.description).joined(separator: " ") }.joined(separator: "\n")
    }

    static func oneFOneB(p: Int, m: Int, rank r: Int, backward: PipelineAction.Kind = .backward) -> [PipelineAction] {
        let warmup = min(p - 1 - r, m)
        var list = (0..<warmup).map { PipelineAction(r, .forward, $0) }
        for i in 0..<(m - warmup) { list += [PipelineAction(r, .forward, warmup + i), PipelineAction(r, backward, i)] }
        list += (m - warmup..<m).map { PipelineAction(r, backward, $0) }
        return list
    }

    /// Megatron-LM's interleaved 1F1B: the k-th forward of a rank runs chunk (k mod p·v) / p on
    /// micro-batch (k / p·v)·p + k mod p; backwards visit the chunks in reverse. When m = p every
    /// forward comes first (Megatron does the same).
    static func interleaved(p: Int, m: Int, v: Int, rank r: Int) -> [PipelineAction] {
        let total = m * v
        let warmup = m == p ? total : min((p - r - 1) * 2 + (v - 1) * p, total)
        func action(_ k: Int, _ kind: PipelineAction.Kind) -> PipelineAction {
            var chunk = (k % (p * v)) / p
            if kind == .backward { chunk = v - 1 - chunk }
            return PipelineAction(chunk * p + r, kind, (k / (p * v)) * p + k % p)
        }
        var list = (0..<warmup).map { action($0, .forward) }
        for i in 0..<(total - warmup) { list += [action(warmup + i, .forward), action(i, .backward)] }
        list += (total - warmup..<total).map { action($0, .backward) }
        return list
    }

    /// ZB-H1: runs 1F1B's order of F and I at unit costs, step by step on every rank at once; a rank
    /// whose next F or I cannot start (input not there yet, or p activations alive) does a pending W.
    static func zeroBubbleH1(p: Int, m: Int) -> [[PipelineAction]] {
        let order = (0..<p).map { oneFOneB(p: p, m: m, rank: $0, backward: .backwardInput) }
        var next = Array(repeating: 0, count: p), live = Array(repeating: 0, count: p)
        var pendingW = Array(repeating: [Int](), count: p)
        var lists = Array(repeating: [PipelineAction](), count: p)
        var finishedAt: [PipelineAction: Int] = [:]
        var t = 0
        while (0..<p).contains(where: { next[$0] < order[$0].count || !pendingW[$0].isEmpty }) {
            var finished: [PipelineAction] = []
            for r in 0..<p {
                if next[r] < order[r].count {
                    let a = order[r][next[r]]
                    let input = a.kind == .forward ? (a.stage == 0 ? nil : PipelineAction(a.stage - 1, .forward, a.microbatch))
                                                   : (a.stage == p - 1 ? nil : PipelineAction(a.stage + 1, .backwardInput, a.microbatch))
                    let arrived = input.map { (finishedAt[$0] ?? .max) <= t } ?? true
                    if arrived && (a.kind != .forward || live[r] < p) {
                        lists[r].append(a); next[r] += 1; finished.append(a)
                        if a.kind == .forward { live[r] += 1 } else { pendingW[r].append(a.microbatch) }
                        continue
                    }
                }
                if !pendingW[r].isEmpty {
                    lists[r].append(PipelineAction(r, .backwardWeight, pendingW[r].removeFirst()))
                    live[r] -= 1
                }
            }
            for a in finished { finishedAt[a] = t + 1 }
            t += 1
        }
        return lists
    }

    /// Adds the receive before, and the send after, each compute action whose neighbour stage is on
    /// another rank, and the optimizer step at the end.
    static func withCommunication(_ compute: [[PipelineAction]], p: Int, stages: Int) -> [[PipelineAction]] {
        compute.enumerated().map { rank, list in
            var out: [PipelineAction] = []
            for a in list {
                let s = a.stage, k = a.microbatch
                switch a.kind {
                case .forward:
                    if s > 0 && (s - 1) % p != rank { out.append(PipelineAction(s, .receiveActivation, k)) }
                    out.append(a)
                    if s < stages - 1 && (s + 1) % p != rank { out.append(PipelineAction(s, .sendActivation, k)) }
                case .backward, .backwardInput:
                    if s < stages - 1 && (s + 1) % p != rank { out.append(PipelineAction(s, .receiveGradient, k)) }
                    out.append(a)
                    if s > 0 && (s - 1) % p != rank { out.append(PipelineAction(s, .sendGradient, k)) }
                default:
                    out.append(a)
                }
            }
            return out + [.step]
        }
    }
}
