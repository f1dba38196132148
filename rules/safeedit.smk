# safeedit: SafeEdit defense metrics for every model variant (lands with the DINM issue).
