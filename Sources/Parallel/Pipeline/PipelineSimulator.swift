// Runs a pipeline schedule's lists against per-action costs: proves it complete and deadlock-free (or
// says which actions wait on which), and predicts the step time, each rank's busy and idle time, the
// bubble and each rank's peak of live micro-batch activations. Each rank runs its list in order;
// compute takes its cost; a send takes no time on its rank (another thread carries it) and arrives
// `transfer` seconds later; a receive waits for that arrival.

/// What each action costs, in seconds (or any unit), per stage.
public struct PipelineCosts: Sendable, Equatable {
    public var forward: [Double], backward: [Double], backwardInput: [Double], backwardWeight: [Double]
    public var transfer: Double
    public var step: Double

    public init(forward: [Double], backward: [Double], backwardInput: [Double], backwardWeight: [Double],
                transfer: Double = 0, step: Double = 0) {
        self.forward = forward; self.backward = backward; self.backwardInput = backwardInput
        self.backwardWeight = backwardWeight; self.transfer = transfer; self.step = step
    }

    /// The same costs on every stage.
    public static func uniform(stages: Int, forward: Double = 1, backwardInput: Double = 1, backwardWeight: Double = 1,
                               transfer: Double = 0) -> PipelineCosts {
        let n = max(stages, 1)
        return PipelineCosts(forward: Array(repeating: forward, count: n), backward: Array(repeating: backwardInput + backwardWeight, count: n),
                             backwardInput: Array(repeating: backwardInput, count: n), backwardWeight: Array(repeating: backwardWeight, count: n),
                             transfer: transfer)
    }

    public func cost(_ a: PipelineAction) -> Double {
        switch a.kind {
        case .forward: forward[a.stage]
        case .backward: backward[a.stage]
        case .backwardInput: backwardInput[a.stage]
        case .backwardWeight: backwardWeight[a.stage]
        case .step: step
        default: 0
        }
    }
}

public struct PipelineInterval: Sendable, Equatable {
    public var action: PipelineAction
    public var start: Double
    public var end: Double
    public init(action: PipelineAction, start: Double, end: Double) { self.action = action; self.start = start; self.end = end }
}

public struct PipelineSimulation: Sendable {
    /// Each rank's compute intervals and its waits (a receive that blocked: start = when the rank
    /// asked, end = arrival).
    public var intervals: [[PipelineInterval]]
    public var stepTime: Double
    public var busy: [Double]
    /// Most micro-batch activations alive at once on each rank (a forward done, its B or W not yet).
    public var peakLiveActivations: [Int]
    /// Idle share of the step over all ranks: 1 − Σ busy / (p · step time).
    public var bubble: Double {
        stepTime > 0 ? 1 - busy.reduce(0, +) / (Double(busy.count) * stepTime) : 0
    }
}

public enum PipelineSimulator {
    /// Simulates `schedule`; throws a `LayoutError` (key `pipeline_schedule`) for an incomplete,
    /// misordered or deadlocking list, naming the actions.
    public static func run(_ schedule: PipelineSchedule, costs: PipelineCosts) throws -> PipelineSimulation {
        try check(schedule)
        let p = schedule.pipelineParallel
        var next = Array(repeating: 0, count: p), clock = Array(repeating: 0.0, count: p)
        var done = Array(repeating: Set<PipelineAction>(), count: p)
        var arrival: [PipelineAction: Double] = [:] // keyed by the receive it satisfies
        var intervals = Array(repeating: [PipelineInterval](), count: p)
        var busy = Array(repeating: 0.0, count: p)
        var live = Array(repeating: 0, count: p), peak = Array(repeating: 0, count: p)
        func fail(_ text: String) -> LayoutError { LayoutError(key: "pipeline_schedule", "\(schedule.kind.rawValue): \(text)") }

        while (0..<p).contains(where: { next[$0] < schedule.actions[$0].count }) {
            var progressed = false
            for r in 0..<p {
                while next[r] < schedule.actions[r].count {
                    let a = schedule.actions[r][next[r]]
                    if a.kind.isReceive {
                        guard let at = arrival[a] else { break }
                        if at > clock[r] { intervals[r].append(PipelineInterval(action: a, start: clock[r], end: at)); clock[r] = at }
                    } else if a.kind.isSend {
                        let source = PipelineAction(a.stage, a.kind == .sendActivation ? .forward : .backward, a.microbatch)
                        let split = PipelineAction(a.stage, .backwardInput, a.microbatch)
                        guard done[r].contains(source) || (a.kind == .sendGradient && done[r].contains(split)) else {
                            throw fail("rank \(r) runs \(a) before \(a.kind == .sendActivation ? source : (schedule.actions[r].contains(split) ? split : source))")
                        }
                        arrival[partner(of: a)] = clock[r] + costs.transfer
                    } else {
                        if let missing = prerequisites(a, schedule).first(where: { !done[r].contains($0) }) {
                            throw fail("rank \(r) runs \(a) before \(missing)")
                        }
                        let cost = costs.cost(a)
                        intervals[r].append(PipelineInterval(action: a, start: clock[r], end: clock[r] + cost))
                        clock[r] += cost; busy[r] += cost
                        switch a.kind {
                        case .forward: live[r] += 1; peak[r] = max(peak[r], live[r])
                        case .backward, .backwardWeight: live[r] -= 1
                        default: break
                        }
                    }
                    done[r].insert(a); next[r] += 1; progressed = true
                }
            }
            if !progressed {
                let waits = (0..<p).filter { next[$0] < schedule.actions[$0].count }.map { "rank \($0) waits at \(schedule.actions[$0][next[$0]])" }
                throw fail("deadlock: " + waits.joined(separator: ", "))
            }
        }
        return PipelineSimulation(intervals: intervals, stepTime: clock.max() ?? 0, busy: busy, peakLiveActivations: peak)
    }

    /// What must have run on the same rank before `a`: its receive, or the neighbouring stage's compute
    /// when that stage is on this rank; the forward before a backward; I before W; every backward
    /// before the step.
    static func prerequisites(_ a: PipelineAction, _ s: PipelineSchedule) -> [PipelineAction] {
        let p = s.pipelineParallel, last = s.stageCount - 1, k = a.microbatch, st = a.stage
        func local(_ neighbour: Int) -> Bool { neighbour % p == st % p }
        switch a.kind {
        case .forward:
            guard st > 0 else { return [] }
            return [local(st - 1) ? PipelineAction(st - 1, .forward, k) : PipelineAction(st, .receiveActivation, k)]
        case .backward, .backwardInput:
            var list = [PipelineAction(st, .forward, k)]
            if st < last {
                list.append(local(st + 1) ? upstreamBackward(st + 1, k, s) : PipelineAction(st, .receiveGradient, k))
            }
            return list
        case .backwardWeight: return [PipelineAction(st, .backwardInput, k)]
        default: return []
        }
    }

    static func upstreamBackward(_ stage: Int, _ k: Int, _ s: PipelineSchedule) -> PipelineAction {
        let split = s.actions[stage % s.pipelineParallel].contains(PipelineAction(stage, .backwardInput, k))
        return PipelineAction(stage, split ? .backwardInput : .backward, k)
    }

    /// Every stage's forward and backward (B, or I and W) for every micro-batch exactly once, on the
    /// stage's rank; each send with its receive; one STEP at the end of each list.
    static func check(_ s: PipelineSchedule) throws {
        func fail(_ text: String) -> LayoutError { LayoutError(key: "pipeline_schedule", "\(s.kind.rawValue): \(text)") }
        guard s.actions.count == s.pipelineParallel else { throw fail("\(s.actions.count) lists for \(s.pipelineParallel) ranks") }
        var seen: [PipelineAction: Int] = [:]
        for (r, list) in s.actions.enumerated() {
            guard list.last == .step, list.filter({ $0 == .step }).count == 1 else { throw fail("rank \(r)'s list must end with its one STEP") }
            for a in list where a != .step {
                guard (0..<s.stageCount).contains(a.stage), (0..<s.microbatches).contains(a.microbatch) else { throw fail("rank \(r): \(a) is outside \(s.stageCount) stages × \(s.microbatches) micro-batches") }
                guard s.rank(ofStage: a.stage) == r else { throw fail("rank \(r) runs \(a), but stage \(a.stage) lives on rank \(s.rank(ofStage: a.stage))") }
                seen[a, default: 0] += 1
            }
        }
        if let twice = seen.first(where: { $0.value > 1 }) { throw fail("\(twice.key) appears \(twice.value) times") }
        for stage in 0..<s.stageCount {
            for k in 0..<s.microbatches {
                func has(_ kind: PipelineAction.Kind) -> Bool { seen[PipelineAction(stage, kind, k)] != nil }
                guard has(.forward) else { throw fail("\(PipelineAction(stage, .forward, k)) is missing") }
                let b = has(.backward), i = has(.backwardInput), w = has(.backwardWeight)
                guard (b && !i && !w) || (!b && i && w) else {
                    throw fail("stage \(stage) micro-batch \(k) needs one B, or one I and one W")
                }
            }
        }
        for (a, _) in seen where a.kind.isSend || a.kind.isReceive {
            guard seen[partner(of: a)] != nil else { throw fail("\(a) has no matching \(partner(of: a))") }
        }
        try checkChannels(s)
    }

    /// The action on the other rank that a send or receive pairs with.
    public static func partner(of a: PipelineAction) -> PipelineAction {
        switch a.kind {
        case .sendActivation: PipelineAction(a.stage + 1, .receiveActivation, a.microbatch)
        case .receiveActivation: PipelineAction(a.stage - 1, .sendActivation, a.microbatch)
        case .sendGradient: PipelineAction(a.stage - 1, .receiveGradient, a.microbatch)
        default: PipelineAction(a.stage + 1, .sendGradient, a.microbatch)
        }
    }

    /// What the runtime relies on besides completeness and the absence of deadlock (which `run`
    /// shows): messages from one rank to another are received in the order they were sent, so a
    /// receive takes the next message from its peer and nothing is buffered or reordered. Sends never
    /// stop a rank (a message the sockets cannot take at once is pushed on during the rank's later
    /// receives and before its STEP), which is the asynchronous send `run` simulates.
    static func checkChannels(_ s: PipelineSchedule) throws {
        func fail(_ text: String) -> LayoutError { LayoutError(key: "pipeline_schedule", "\(s.kind.rawValue): \(text)") }
        let p = s.pipelineParallel
        for from in 0..<p {
            for to in 0..<p where to != from {
                let sent = s.actions[from].filter { $0.kind.isSend && s.rank(ofStage: partner(of: $0).stage) == to }.map { partner(of: $0) }
                let received = s.actions[to].filter { $0.kind.isReceive && s.rank(ofStage: partner(of: $0).stage) == from }
                if let i = zip(sent, received).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                    throw fail("rank \(from) sends to rank \(to) for \(sent[i]) while rank \(to) receives \(received[i]) first: messages would cross")
                }
            }
        }
    }
}
