/// A data file that cannot be used, with the path and what is wrong with it.
public struct DatasetError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    public var description: String { "\(path): \(problem)" }
}
