//! (in progress)

use crate::{Codec, GgmlType};

pub(crate) fn codec(_ty: GgmlType) -> Option<Codec> {
    None
}
