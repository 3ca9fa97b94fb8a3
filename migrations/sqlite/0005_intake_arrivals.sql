-- The load report counts records received in its window (the arrival rate the scaler reads):
-- an index on the receive time keeps that a range scan of the window, not of the whole queue.
CREATE INDEX intake_received ON intake (received_at_ms);
