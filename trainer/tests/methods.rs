use cls_trainer::methods::*;
#[test] fn builds() { for m in METHODS { build(m, &MethodConfig::default(), 4, 3, tch::Device::Cpu).unwrap(); } }
