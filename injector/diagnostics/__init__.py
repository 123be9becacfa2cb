"""Why a pod has, or has not, credentials: `doctor`'s checks, `audit`, trust policies and the
live-cluster reader they share. Reads the cluster; never changes it."""
