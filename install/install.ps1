<#
.SYNOPSIS
Install sdbridge into .\.venv on Windows (mirror of install/install.sh).

.DESCRIPTION
  powershell -ExecutionPolicy Bypass -File install\install.ps1 [-Cpu|-Cuda] [-Dev] [-Extras spout,ndi,tensorrt] [-Python EXE]
The CUDA build of torch is the default (-Cpu for the CPU build). Safe to run again: an existing
.venv is reused and only what is missing is installed.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File install\install.ps1 -Extras spout,ndi,tensorrt
#>
[CmdletBinding()]
param(
    [switch]$Cpu,
    [switch]$Cuda,
    [switch]$Dev,
    [string[]]$Extras = @(),
    [string]$Python = ""
)

# Kept in step with install/install.sh.
$TorchVersion = "2.13.0"
$CudaIndex = "https://download.pytorch.org/whl/cu128"
$CpuIndex = "https://download.pytorch.org/whl/cpu"
$KnownExtras = @("spout", "ndi", "tensorrt", "onnx", "video", "dev")

# Not "Stop": Windows PowerShell 5.1 turns a native program's stderr into terminating errors under
# it. Every native call below checks $LASTEXITCODE instead.
$ErrorActionPreference = "Continue"
Set-StrictMode -Version 3.0

function Say([string]$Message) { Write-Host "install.ps1: $Message" }
function Die([string]$Message) {
    Write-Host "install.ps1: error: $Message" -ForegroundColor Red
    exit 1
}

$Here = Split-Path -Parent $PSScriptRoot
$Venv = Join-Path $Here ".venv"
$VenvPython = Join-Path $Venv "Scripts\python.exe"

if ($Cpu -and $Cuda) { Die "-Cpu and -Cuda exclude each other: pick one" }

# From cmd.exe "-Extras spout,ndi" arrives as one string; from PowerShell as an array. Accept both.
$ExtraList = @($Extras -join "," -split "," | ForEach-Object { $_.Trim().ToLower() } | Where-Object { $_ })
foreach ($extra in $ExtraList) {
    if ($KnownExtras -notcontains $extra) {
        Die "unknown extra '$extra': use any of $($KnownExtras -join ', ') (e.g. -Extras spout,ndi,tensorrt)"
    }
}

# Find a Python >= 3.10. The "py" launcher is preferred: the bare "python" on a fresh Windows is
# often the Microsoft Store stub, which prints nothing useful.
function Find-Python {
    if ($Python) { return , @($Python) }
    if (Get-Command py -ErrorAction SilentlyContinue) { return , @("py", "-3") }
    if (Get-Command python -ErrorAction SilentlyContinue) { return , @("python") }
    Die "no Python found: install Python 3.10-3.12 from python.org (tick 'Add to PATH') or pass -Python C:\path\to\python.exe"
}
$PyCmd = Find-Python
$PyExe = $PyCmd[0]
$PyArgs = @($PyCmd | Select-Object -Skip 1)

$PyVersion = & $PyExe @PyArgs -c "import sys; print('%d.%d.%d' % sys.version_info[:3])" 2>$null
if ($LASTEXITCODE -ne 0 -or -not $PyVersion) {
    Die "'$($PyCmd -join ' ')' does not run: install Python 3.10-3.12 from python.org or pass -Python"
}
if ([version]$PyVersion -lt [version]"3.10.0") {
    Die "Python >= 3.10 is required, '$($PyCmd -join ' ')' is $PyVersion"
}

if ($Cpu) {
    $Flavour = "cpu"
} else {
    $Flavour = "cuda"
    if (-not $Cuda) {
        Say "no -Cpu given: installing the CUDA build of torch (the default on Windows)"
    }
    $Smi = Get-Command nvidia-smi -ErrorAction SilentlyContinue
    if (-not $Smi) {
        Say "warning: nvidia-smi not found: without an NVIDIA driver the CUDA build cannot use a GPU (use -Cpu for a CPU-only machine)"
    }
}

if (-not (Test-Path $VenvPython)) {
    Say "creating $Venv"
    & $PyExe @PyArgs -m venv $Venv
    if ($LASTEXITCODE -ne 0) { Die "could not create a venv in $Venv (is the folder writable?)" }
}

function Invoke-Pip([string[]]$PipArgs) {
    # Out-Host keeps pip's output out of the function's return value (only the exit code returns).
    & $VenvPython -m pip --disable-pip-version-check @PipArgs | Out-Host
    return $LASTEXITCODE
}

$HaveTorch = & $VenvPython -c "import torch; print(torch.__version__)" 2>$null
if ($LASTEXITCODE -ne 0) { $HaveTorch = "" }
if ($Flavour -eq "cpu") {
    if ($HaveTorch -like "$TorchVersion*" -and $HaveTorch -notlike "*cu*") {
        Say "torch $HaveTorch (CPU) already installed"
    } else {
        Say "installing torch==$TorchVersion (CPU build)"
        # The CPU wheel lives on PyTorch's index; its dependencies come from PyPI.
        $rc = Invoke-Pip @("install", "-q", "torch==$TorchVersion", "--timeout", "30",
                           "--index-url", $CpuIndex, "--extra-index-url", "https://pypi.org/simple")
        if ($rc -ne 0) { Die "could not install torch==$TorchVersion (CPU build); check the network or pip's index settings" }
    }
} else {
    if ($HaveTorch -like "*cu*") {
        Say "torch $HaveTorch (CUDA) already installed"
    } else {
        Say "installing torch==$TorchVersion (CUDA build from $CudaIndex)"
        $rc = Invoke-Pip @("install", "-q", "torch==$TorchVersion", "--index-url", $CudaIndex)
        if ($rc -ne 0) { Die "could not install the CUDA build of torch; retry with -Cpu" }
    }
}

$Groups = @($ExtraList)
if ($Dev -and $Groups -notcontains "dev") { $Groups += "dev" }
$Spec = "."
if ($Groups.Count -gt 0) { $Spec = ".[" + ($Groups -join ",") + "]" }
Say "installing sdbridge $Spec"
Push-Location $Here
try {
    $rc = Invoke-Pip @("install", "-q", "-e", $Spec)
} finally {
    Pop-Location
}
if ($rc -ne 0) { Die "pip could not install sdbridge $Spec" }

& $VenvPython -c "import bridge, torch; print('install.ps1: sdbridge', bridge.__version__, 'with torch', torch.__version__)"
if ($LASTEXITCODE -ne 0) { Die "sdbridge installed but does not import" }
Say "done. Next: .venv\Scripts\sdbridge demo   (or: .venv\Scripts\sdbridge doctor to check GPU, NDI and Spout)"
