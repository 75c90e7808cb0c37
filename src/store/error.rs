use std::{error::Error, fmt};

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A store failed to read or write.
///
/// Transient errors (a lost connection, a timeout, a busy database) are worth retrying; permanent
/// ones (a corrupt file, a value the store refuses, a wrong configuration) are not, although the
/// worker still keeps the data and tries again after its circuit breaker's cool-down.
///
/// ```
/// use std::error::Error;
/// use tower_sse_tracking::store::StoreError;
///
/// let io = std::io::Error::other("connection reset by peer");
/// let error = StoreError::transient("write failed").with_source(io);
/// assert!(error.is_transient());
/// assert_eq!(error.to_string(), "transient store error: write failed");
/// assert!(error.source().is_some());
/// ```
#[derive(Debug)]
pub struct StoreError {
    transient: bool,
    message: String,
    source: Option<BoxError>,
}

impl StoreError {
    /// A failure that a retry may cure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            transient: true,
            message: message.into(),
            source: None,
        }
    }

    /// A failure that a retry will not cure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            transient: false,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error, returned by [`Error::source`].
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.transient {
            "transient"
        } else {
            "permanent"
        };
        write!(f, "{kind} store error: {}", self.message)
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_source() {
        let io = std::io::Error::other("connection reset");
        let err = StoreError::transient("write failed").with_source(io);
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "transient store error: write failed");
        assert_eq!(err.source().unwrap().to_string(), "connection reset");
        assert!(!StoreError::permanent("corrupt").is_transient());
        assert!(StoreError::permanent("corrupt").source().is_none());
    }
}
