"""The webhook's rules, pure: settings and flags, who a pod is, the plan of a mutation, the
decision and the AdmissionReview codec. No I/O, no clock, no logging: everything here is a
function of its arguments, so `serve`, `mutate` and `doctor` cannot disagree."""
