/// nccl-tests' definitions: algbw = bytes / time; busbw = algbw * 2(n-1)/n for allreduce, the rate each
/// link must sustain, comparable across world sizes and with the link speed.
public func algorithmBandwidth(bytes: Int, seconds: Double) -> Double { seconds > 0 ? Double(bytes) / seconds : 0 }

public func busBandwidth(algorithmBandwidth: Double, worldSize n: Int) -> Double {
    n > 1 ? algorithmBandwidth * 2 * Double(n - 1) / Double(n) : algorithmBandwidth
}

/// Sizes from `minimum` to `maximum` bytes, multiplying by `factor`, rounded down to whole floats.
public func geometricSizes(minimum: Int, maximum: Int, factor: Int) -> [Int] {
    precondition(minimum >= 4 && maximum >= minimum && factor >= 2, "bad sweep \(minimum)...\(maximum) x\(factor)")
    var sizes: [Int] = []
    var s = minimum
    while s <= maximum { sizes.append(s / 4 * 4); s *= factor }
    return sizes
}

/// One measured point.
public struct BenchResult: Codable, Sendable, Equatable {
    public var algorithm: String
    public var bytes: Int
    public var count: Int
    public var ranks: Int
    public var microseconds: Double
    public var algbwGBps: Double
    public var busbwGBps: Double
    public var wrong: Int
    /// The same allreduce out of place (into another buffer, the input left as it was), when measured:
    /// time in µs and wrong values (input changed or result wrong).
    public var outOfPlaceMicroseconds: Double?
    public var outOfPlaceWrong: Int?
    /// `busFactor`: busbw / algbw (nccl-tests: 2(n-1)/n for allreduce, the default; (n-1)/n for
    /// all-to-all; 1 for send/receive).
    public init(algorithm: String, bytes: Int, ranks: Int, seconds: Double, wrong: Int, busFactor: Double? = nil) {
        self.algorithm = algorithm; self.bytes = bytes; self.count = bytes / 4; self.ranks = ranks
        microseconds = seconds * 1e6
        let algbw = algorithmBandwidth(bytes: bytes, seconds: seconds) / 1e9
        algbwGBps = algbw
        busbwGBps = busFactor.map { algbw * $0 } ?? busBandwidth(algorithmBandwidth: algbw, worldSize: ranks)
        self.wrong = wrong
    }
}
