/// A time on the continuous clock, held in a form whose layout the compiler knows.
///
/// `ContinuousClock.Instant` is not `@frozen`: the concurrency library may change its layout, so
/// every struct or enum that holds one has its layout worked out at run time. Each copy, field
/// read and `switch` of such a value then goes through the runtime (value witnesses, enum tag
/// calls), and the optimizer cannot copy out just the field it needs: reading a job's phase copied
/// the whole job. The times the scheduler keeps in each job are this instead: the `Duration`
/// (frozen) since an instant fixed the first time the process needs it. Converting to and from an
/// instant is exact, so simulated clocks work as well as the real one.
public struct Moment: Sendable, Hashable, Comparable {
    /// The instant every moment of this process is measured from.
    private static let origin = ContinuousClock.now
    private let sinceOrigin: Duration

    /// The moment of `instant`.
    public init(_ instant: ContinuousClock.Instant) {
        sinceOrigin = Self.origin.duration(to: instant)
    }

    /// This moment as an instant of the continuous clock.
    public var instant: ContinuousClock.Instant { Self.origin.advanced(by: sinceOrigin) }

    public static func < (lhs: Moment, rhs: Moment) -> Bool { lhs.sinceOrigin < rhs.sinceOrigin }
}

/// An instant kept as a ``Moment``, so that the type holding it has a layout known at compile
/// time (see ``Moment``); it reads and writes as a `ContinuousClock.Instant`.
@propertyWrapper
public struct StoredAsMoment: Sendable, Hashable {
    private var moment: Moment

    /// Keeps `wrappedValue`.
    public init(wrappedValue: ContinuousClock.Instant) { moment = Moment(wrappedValue) }

    /// The instant kept.
    public var wrappedValue: ContinuousClock.Instant {
        get { moment.instant }
        set { moment = Moment(newValue) }
    }
}

/// An optional instant kept as a ``Moment`` (see ``StoredAsMoment``).
@propertyWrapper
public struct StoredAsOptionalMoment: Sendable, Hashable {
    private var moment: Moment?

    /// Keeps `wrappedValue`.
    public init(wrappedValue: ContinuousClock.Instant?) { moment = wrappedValue.map(Moment.init) }

    /// The instant kept, if any.
    public var wrappedValue: ContinuousClock.Instant? {
        get { moment?.instant }
        set { moment = newValue.map(Moment.init) }
    }
}
