//! One image in, one [`dicom::Mammogram`] or grey image out, for trainer and appliance alike:
//! the DICOM reader and grey pipeline, the research sets' image files, input listing, and THE
//! one preprocessing both sides use.

pub mod dicom;
pub mod files;
pub mod image_file;
pub mod preprocess;
