module pod-identity-injector/tools/image/pause

go 1.22
