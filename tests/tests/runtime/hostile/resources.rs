//! Host resources: bounded host work per guest call, publish loops, opaque errors.
